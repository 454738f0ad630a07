"""Runs `launch/train.py`'s job while recording, for tests/test_halving_train.py, what each optimizer step ran:
every side-network call (the member it belongs to, whether it trained) and the step's peak memory as the CUDA
caching allocator would count it (`s4v.memory.LiveMemory`: the model's weights and gradients and the optimizer's
state held, plus every tensor the step creates until it is freed). Rank 0 writes them:

    python tests/halving_probe.py OUT.json --ds JSON --config YAML key=value ...

A side network runs block by block (`SideNetwork.run_block`); the first block's call is counted, so one count
is one forward of one member over one batch. On CPU the process's resident set hardly moves with the side
networks (the allocator keeps freed memory), hence the replay.
"""

import json
import os
import sys
from collections import Counter, defaultdict

from torch import Tensor

from s4v.memory import LiveMemory
from s4v.models.side import SideNetwork
from s4v.train.cli import train_main
from s4v.train.trainer import Trainer

calls: Counter[tuple[int, str, bool]] = Counter()
peaks: defaultdict[int, int] = defaultdict(int)
now: dict = {"step": 0, "names": {}}


def _held(trainer: Trainer) -> list[Tensor]:
    params = list(trainer.model.parameters())
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
    return [*params, *(p.grad for p in params if p.grad is not None), *state]


def _probed_train_step(train_step):
    def step(self: Trainer, batch) -> bool:
        now["step"] = self.position.step + 1  # the step this micro-batch belongs to
        now["names"] = {id(m.side): member.name for m, member in zip(self.model.members, self.members, strict=True)}
        live = LiveMemory()
        live.track(*_held(self))
        with live:
            done = train_step(self, batch)
        peaks[now["step"]] = max(peaks[now["step"]], live.peak)
        return done

    return step


def _counting_run_block(run_block):
    def run(self: SideNetwork, block, *args, **kwargs):
        if block is self.blocks[0] and not block.mlp_bn.weight.is_meta:  # meta copies only count FLOPs
            # A selection pass after step s runs with the names of step s's pass (the rebuild comes after it).
            calls[(now["step"], now["names"][id(self)], self.training)] += 1
        return run_block(self, block, *args, **kwargs)

    return run


if __name__ == "__main__":
    out, *argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher's, first
    Trainer.train_step = _probed_train_step(Trainer.train_step)
    SideNetwork.run_block = _counting_run_block(SideNetwork.run_block)
    code = train_main(argv)
    if os.environ.get("RANK", "0") == "0":
        rows = [{"step": s, "member": name, "training": t, "calls": n} for (s, name, t), n in sorted(calls.items())]
        with open(out, "w") as f:
            json.dump({"calls": rows, "peak_bytes": peaks}, f)
    sys.exit(code)
