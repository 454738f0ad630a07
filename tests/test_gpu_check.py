"""`make gpu-check`'s dry run (`benchmarks/gpu_check.py --dry-run`): every part runs in its CPU form, or says why
it needs CUDA, and the one report lists them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ["tests", "temporal_conv", "frozen_tower", "throughput", "memory", "decode", "input_pipeline"]


def test_dry_run_reports_every_part(tmp_path: Path) -> None:
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path), "--budget-s", "400"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    parts = {p["name"]: p for p in report["parts"]}
    assert list(parts) == PARTS
    assert parts["tests"]["status"] == "skipped" and "needs CUDA" in parts["tests"]["reason"]
    for name in ("temporal_conv", "frozen_tower", "memory"):
        assert parts[name]["status"] == "ok", parts[name]
        assert parts[name]["reason"].startswith("dry run:"), parts[name]  # what the CPU form leaves out
    for name in ("throughput", "decode"):  # optional inputs: the script of another change, DALI
        assert parts[name]["status"] == "ok" or (parts[name]["status"] == "skipped" and parts[name]["reason"])
    assert parts["frozen_tower"]["summary"]["rows"][0]["clips_per_s"] > 0
    assert parts["input_pipeline"]["reason"].startswith("dry run:")  # the CPU rows: tests/test_input_pipeline_bench.py
    markdown = (tmp_path / "report.md").read_text()
    for name in PARTS:
        assert f"## {name}: {parts[name]['status']}" in markdown
