"""Loads a checkpoint the way `--resume` does, at whatever world size this is launched with, and writes
(rank 0) the consolidated training state as loaded, for tests/test_elastic.py to compare bitwise.

    deepspeed --num_gpus N tests/elastic_probe.py CHECKPOINT OUT.pt --ds JSON key=value ...
"""

import sys

import torch

from s4v.config import load_config
from s4v.train import elastic
from s4v.train.cli import split_overrides
from s4v.train.distributed import shutdown_distributed
from s4v.train.trainer import Trainer

if __name__ == "__main__":
    checkpoint, out, _, ds, *items = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    run, ds_overrides = split_overrides(items)
    trainer = Trainer(load_config(None, run), ds, ds_overrides, resume=checkpoint)
    state = elastic.consolidated(trainer.engine, trainer.view)
    if trainer.dist.is_main:
        position = trainer.position.state_dict()
        torch.save(
            {"state": state, "module": state["module"], "lr": trainer.engine.get_lr(), "position": position}, out
        )
    shutdown_distributed()
