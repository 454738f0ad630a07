"""`launch/eval.py --checkpoint <sweep root> --ensemble N`: the N best members by selection metric (halving
rungs, else best validation metric) averaged in softmax on the evaluation's one frozen pass, reported beside
the best member; the request is checked in one line before anything heavy loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_halving_train import NAMES
from test_sweep_train import ENV, REPO

from s4v.train.ensemble import rank_members, section


def _member(name: str, best: float | None = None, exported: bool = True) -> dict:
    return {"name": name, "best": best, "export": f"members/{name}/final" if exported else None}


def _decision(rung: int, live: list[int], scores: list[float | None], kept: list[int]) -> dict:
    culled = [k for k in live if k not in kept]
    return {"rung": rung, "step": rung + 2, "live": live, "scores": scores, "kept": kept, "culled": culled}


def _halving_doc(members: list[dict], decisions: list[dict], select: str = "heldout") -> dict:
    note = "chosen on val" if select == "val" else None
    halving = {"eta": 2, "metric": "top1", "select": select, "decisions": decisions, "note": note}
    return {"metric": "top1", "higher_is_better": True, "members": members, "halving": halving}


def test_halving_ranks_by_the_latest_rung_then_score_then_member_order() -> None:
    members = [_member(n) for n in "abcdefg"]
    members[6] = _member("g", exported=False)  # failed after rung 1: no export, not ranked
    decisions = [
        # listed out of order: the rung number, not the list, says which is later
        _decision(1, [0, 3, 4, 6], [0.5, 0.5, 0.25, 0.9], [0, 3]),
        _decision(0, [0, 1, 2, 3, 4, 5, 6], [0.1, 0.9, 0.2, 0.1, 0.3, None, 0.1], [0, 3, 4, 6]),
    ]
    ranked = rank_members(_halving_doc(members, decisions))
    # rung 1: a, d tie on 0.5 (member order), e below; rung 0 alone: b 0.9, c 0.2, f non-finite last
    assert [(p.name, p.score, p.rung) for p in ranked.picks] == [
        ("a", 0.5, 1), ("d", 0.5, 1), ("e", 0.25, 1), ("b", 0.9, 0), ("c", 0.2, 0), ("f", None, 0),
    ]  # fmt: skip
    assert ranked.basis == "heldout top1 at the latest rung each member reached" and ranked.note is None
    assert rank_members(_halving_doc(members, decisions, "val")).note == "chosen on val"


def test_a_static_sweep_ranks_by_best_validation_and_says_it_is_optimistic() -> None:
    members = [_member("a", 0.5), _member("b", 0.7), _member("c"), _member("d", 0.5), _member("e", 0.9, False)]
    doc = {"metric": "top1", "higher_is_better": True, "members": members, "halving": None}
    ranked = rank_members(doc)
    assert [p.name for p in ranked.picks] == ["b", "a", "d"] and ranked.basis == "best val top1"
    by_name = {"a": _figures(0.5), "b": _figures(0.7), "d": _figures(0.5)}
    assert "optimistic" in ranked.note and f"Note: {ranked.note}." in section(ranked, _figures(0.6), by_name)
    # a halving section without a decision taken ranks as a static sweep
    doc = _halving_doc(members, [])
    assert [p.name for p in rank_members(doc).picks] == ["b", "a", "d"]
    doc = {**doc, "higher_is_better": False}
    assert [p.name for p in rank_members(doc).picks] == ["a", "d", "b"]


def _figures(top1: float) -> dict:
    return {"top1": top1, "top5": 1.0, "mean_class_accuracy": top1}


def _eval(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch/eval.py", "--checkpoint", str(root), "--out", str(out), "--dtype", "fp32", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize(
    ("where", "n", "message"),
    [
        ("root", "0", "error: --ensemble 0: average at least one member"),
        ("root", "3", "error: --ensemble 3: the sweep exported 3 member(s), 2 of them with a selection score"),
        ("member", "1", "is not a sweep's out_dir (sweep.json and members/)"),
        ("unscored", "1", "has no selection scores (no halving rung decided and no validation during training"),
    ],
)
def test_a_bad_request_is_one_error_line(tmp_path: Path, where: str, n: str, message: str) -> None:
    root = tmp_path / where
    (root / "members" / "a" / "final").mkdir(parents=True)
    scores = (None, None, None) if where == "unscored" else (0.5, 0.25, None)
    members = [_member(name, s) for name, s in zip("abc", scores, strict=True)]
    doc = {"metric": "top1", "higher_is_better": True, "members": members, "halving": None}
    (root / "sweep.json").write_text(json.dumps(doc))
    checkpoint = root / "members" / "a" / "final" if where == "member" else root
    r = _eval(checkpoint, tmp_path / "out", "--ensemble", n)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and message in r.stderr


def _probabilities(finals: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities (K, videos, classes)) of exported members on one tower (one: that member alone)."""
    from s4v.config import load_config
    from s4v.data import build_loader
    from s4v.train.tasks import RecognitionTask
    from s4v.train.trained import load_members

    cfg = load_config(finals[0] / "config.yaml")
    loader = build_loader(cfg.data, "val", 0, 1, cfg.train.seed)
    model, _, _ = load_members(finals, torch.device("cpu"), torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads_per_rank)  # as the runs: extra threads on shared cores crawl
    try:
        return RecognitionTask(cfg, torch.float32, torch.device("cpu")).probabilities(model, loader)
    finally:
        torch.set_num_threads(threads)


def test_the_ensemble_is_the_mean_softmax_of_the_best_members(
    one_rank_halving: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _, root, _ = one_rank_halving  # evaluated with --out elsewhere: the shared run is left as it is
    doc = json.loads((root / "sweep.json").read_text())
    expected = [p.name for p in rank_members(doc).picks]
    assert expected[0] == NAMES[doc["halving"]["decisions"][-1]["kept"][0]]  # the last rung's survivor leads
    r = _eval(root, tmp_path / "two", "--ensemble", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "ensemble.json").read_text())
    assert [m["name"] for m in report["members"]] == expected[:2] and report["best_member"]["name"] == expected[0]
    assert f"[s4v] ensemble of 2 ({', '.join(expected[:2])}; by heldout top1" in r.stdout
    assert "## Ensemble of the 2 best member(s) by heldout top1" in (tmp_path / "two" / "sweep.md").read_text()

    # Each member alone, then all on one pass: the same probabilities, and the ensemble is their mean.
    from s4v.train.evaluate import classification_metrics

    labels, alone = zip(*(_probabilities([root / "members" / name / "final"]) for name in expected[:2]), strict=True)
    alone = np.concatenate(alone)
    _, together = _probabilities([root / "members" / name / "final" for name in NAMES])
    np.testing.assert_allclose(together[[NAMES.index(name) for name in expected[:2]]], alone, rtol=0, atol=1e-6)
    ensemble = json.loads((tmp_path / "two" / "ensemble" / "eval.json").read_text())
    hand = classification_metrics(labels[0], alone.mean(0), ensemble["classes"])
    for key in ("top1", "top5", "mean_class_accuracy", "confusion_matrix", "per_class_accuracy"):
        assert ensemble[key] == hand[key], key
    assert ensemble["members"] == expected[:2] and report["ensemble"]["top1"] == hand["top1"]

    r = _eval(root, tmp_path / "one", "--ensemble", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "ensemble" / "eval.json").read_text())
    best = json.loads((tmp_path / "one" / expected[0] / "eval.json").read_text())
    for key in ("top1", "top5", "mean_class_accuracy", "confusion_matrix", "per_class_accuracy"):
        assert one[key] == best[key], key
