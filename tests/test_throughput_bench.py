"""benchmarks/throughput.py on the tiny tower: the four methods timed, FLOPs as counted, the ratio line printed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from s4v.memory.perf import train_step_flops
from s4v.memory.step import account_step
from s4v.memory.workloads import MethodSpec, workload

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def _bench() -> ModuleType:
    """The benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("throughput_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_reports_every_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    out = tmp_path / "throughput.json"
    argv = ["--backbone", "tiny", "--batch", "1", "--warmup", "1", "--steps", "1", "--device", "cpu"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {r["method"]: r for r in report["results"]}
    assert sorted(rows) == sorted(["ours-light", "ours", "st-adapter", "full"])
    for method, row in rows.items():
        assert row["clips_per_s"] > 0 and row["batch"] == 1
        parts = sum(row["breakdown_s"].values())
        assert abs(parts - row["step_s"]) <= 0.1 * row["step_s"], (method, row["breakdown_s"], row["step_s"])
        assert row["flops"] == train_step_flops(workload(MethodSpec(method, "tiny", 1, 8)))
        assert row["mfu"] is None
    assert rows["st-adapter"]["breakdown_s"]["side_fwd"] == 0.0  # its whole forward is the tower's
    assert rows["ours-light"]["breakdown_s"]["frozen_fwd"] > 0
    ratio = rows["ours-light"]["clips_per_s"] / rows["st-adapter"]["clips_per_s"]
    assert f"side4video / st-adapter clips/s = {ratio:.2f}\n" in printed
    assert out.with_suffix(".png").stat().st_size > 0


def test_largest_batch_is_the_edge_of_the_budget() -> None:
    """The batch found fits the budget by exact accounting, one more clip does not."""
    bench = _bench()
    precision = bench.precision_of("bf16")
    spec = MethodSpec("st-adapter", "tiny", 1, 8)

    def peak(batch: int) -> int:
        return account_step(workload(MethodSpec(spec.method, spec.backbone, batch, spec.frames)), precision).peak

    budget = (peak(6) + peak(7)) / 2
    batch, accounted = bench.largest_batch(spec, budget, precision)
    assert batch == 6 and accounted == peak(6) <= budget < peak(7)
    assert bench.largest_batch(spec, peak(1) / 2, precision) == (0, 0)
