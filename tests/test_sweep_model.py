"""One frozen pass for many side networks (`run_side_networks`, `SweepClassifier`): each member's logits,
gradients and BatchNorm statistics equal those of its side network and head run alone, bitwise (CPU fp32),
while the tower runs once per batch instead of once per member."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from s4v.models import SideSpec, create_model
from s4v.models.classifier import Side4VideoClassifier, SideMember, SweepClassifier

# (width, layers): the tiny tower has 4 layers, so 2 side blocks read every second one.
MEMBERS = [(64, 4), (128, 2), (64, 2)]


def _models(checkpoint: bool, form: str) -> list[Side4VideoClassifier]:
    """Members on one tiny tower; `form`: the side blocks' pre-norm (CLIP) or post-norm (ViT-E) form."""
    torch.manual_seed(0)
    first = create_model("tiny", num_classes=5)
    models = []
    for k, (dim, layers) in enumerate(MEMBERS):
        torch.manual_seed(100 + k)  # each member its own init, as a run of its own seed would have it
        models.append(
            Side4VideoClassifier(first.backbone, SideSpec(dim, layers, form=form, checkpoint=checkpoint), 5).train()
        )
    return models


def _step(model: torch.nn.Module, video: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(video)
    if logits.dim() == 3:  # a sweep: the members' losses are independent, their sum trains each alone
        loss = sum(F.cross_entropy(member, labels) for member in logits)
    else:
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    return logits.detach()


@pytest.mark.parametrize("form", ["pre", "post"])
@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "side-checkpoint"])
def test_each_member_of_a_sweep_equals_its_network_alone(form: str, checkpoint: bool) -> None:
    models = _models(checkpoint, form)
    backbone = models[0].backbone
    sweep = SweepClassifier(backbone, [SideMember(copy.deepcopy(m.side), copy.deepcopy(m.head)) for m in models])
    video, labels = torch.randn(2, 8, 3, 64, 64), torch.tensor([1, 3])

    calls = 0
    block = backbone.block

    def counted(index: int, x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return block(index, x)

    backbone.block = counted
    alone = [_step(m, video, labels) for m in models]
    assert calls == len(MEMBERS) * len(backbone.blocks)
    calls = 0
    together = _step(sweep, video, labels)
    assert calls == len(backbone.blocks)  # one frozen pass for every member
    assert together.shape == (len(MEMBERS), 2, 5)
    for k, (model, member) in enumerate(zip(models, sweep.members, strict=True)):
        assert torch.equal(together[k], alone[k])
        ours = dict(member.named_parameters())
        for name, p in [*(("side." + n, q) for n, q in model.side.named_parameters())]:
            assert torch.equal(ours[name].grad, p.grad), name
        for name, p in model.head.named_parameters():
            assert torch.equal(ours["head." + name].grad, p.grad), name
        theirs = {
            **{"side." + n: b for n, b in model.side.named_buffers()},
            **{"head." + n: b for n, b in model.head.named_buffers()},
        }
        assert all(torch.equal(b, theirs[n]) for n, b in member.named_buffers())  # BatchNorm statistics
    assert not any(p.grad is not None for p in backbone.parameters())


def test_a_sweep_is_built_on_one_tower() -> None:
    torch.manual_seed(0)
    a, b = create_model("tiny", num_classes=3), create_model("tiny", num_classes=3)
    with pytest.raises(ValueError, match="same frozen tower"):
        SweepClassifier.of([a, b])
    sweep = SweepClassifier.of([a, Side4VideoClassifier(a.backbone, SideSpec(64, 4), 3)])
    assert len(sweep.members) == 2 and sweep.members[0].side is a.side


def test_sweep_benchmark_on_the_tiny_tower(tmp_path, monkeypatch, capsys) -> None:
    """benchmarks/sweep.py --halving --quick end to end (tiny tower, 1 timed step). Its FLOP counts add up: K
    members cost the tower once plus K times a member's side network and head. Through the trainer (single,
    static K=4 and K=8, K=8 halving at eta 2 over 16 steps) the halving run's pass holds 8, 4, 2 then 1 members,
    its rungs fall after 1/8, 1/4 and 1/2 of the run, and the costs, FLOP units and bounds are the sums and
    ratios they claim."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep.py"
    spec = importlib.util.spec_from_file_location("sweep_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "sweep.json"
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--halving", "--quick", "--members", "1", "2", "--out", str(out)])
    bench.main()
    text = capsys.readouterr().out
    assert "| 2 |" in text and "FLOP ratio at K=8, side checkpointing off:" in text
    assert "| halving_8 | 1 | 8 |" in text and "goal at tiny, K=16, eta 2" in text
    doc = json.loads(out.read_text())
    assert [r["members"] for r in doc["rows"]] == [1, 2]
    assert all(r["speedup"] == r["separate_s"] / r["sweep_s"] for r in doc["rows"])
    for form in ("plain", "checkpointed"):
        flops = {int(k): v for k, v in doc["flops"][form].items()}
        side = (flops[16] - flops[8]) / 8  # one member's side network and head
        assert side > 0 and flops[8] - flops[1] == pytest.approx(7 * side, rel=1e-9)
        assert 8 * flops[1] / flops[8] > 1  # the tower is counted once
    assert doc["flops"]["checkpointed"]["8"] > doc["flops"]["plain"]["8"]  # the recomputed side forward

    halving = doc["halving"]
    t = halving["trainer"]
    assert {name: [(p["members"], p["steps"]) for p in cut] for name, cut in t["phases"].items()} == {
        "single": [(1, 4)], "static_4": [(4, 4)], "static_8": [(8, 4)], "halving_8": [(8, 2), (4, 2), (2, 4), (1, 8)],
    }  # fmt: skip
    assert [(r["step"], r["ranked"], r["kept"]) for r in t["rungs"]] == [(2, 8, 4), (4, 4, 2), (8, 2, 1)]
    assert all(p["step_s"] > 0 for cut in t["phases"].values() for p in cut)
    units = t["units"]
    assert t["single_total_s"] == pytest.approx(16 * t["phases"]["single"][0]["step_s"])
    overheads = sum(r["overhead_s"] for r in t["rungs"]) / t["single_total_s"]
    assert units["halving_8"] == pytest.approx(t["halving_steps_only_units"] + overheads)
    assert t["halving_vs_separate"] == pytest.approx(8 / units["halving_8"])
    assert t["halving_vs_static_8"] == pytest.approx(units["static_8"] / units["halving_8"])
    assert t["static_speedup"] == {str(k): pytest.approx(k / units[f"static_{k}"]) for k in (4, 8)}
    # FLOP units: each phase's share of the run at its per-step count, over one member's.
    counts = {int(k): f for k, f in doc["flops"]["checkpointed"].items()}
    shares = {16: 1 / 16, 8: 1 / 16, 4: 1 / 8, 2: 1 / 4, 1: 1 / 2}
    k16 = halving["flops_units"]["tiny, side checkpointing on"]
    assert k16 == {"members": 16, "units": pytest.approx(sum(s * counts[k] for k, s in shares.items()) / counts[1])}
    assert 1 < k16["units"] < counts[16] / counts[1]  # between one run and the static K=16 sweep
    assert halving["tower_s"] > 0
    bounds = {(b["members"], b["figure"]): b for b in halving["bounds"]}
    figures = [(1, "model alone"), (2, "model alone"), (4, "through the trainer"), (8, "through the trainer")]
    assert list(bounds) == figures and bounds[figures[0]]["bound"] == pytest.approx(1.0)
    assert bounds[figures[-1]]["speedup"] == pytest.approx(t["static_speedup"]["8"])
