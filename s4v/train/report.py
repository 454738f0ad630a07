"""`python -m s4v.train.report RUN_DIR ...`: the closing table of `make demo`, one row per training run.

Reads each run's `result.json` (written by training) and its newest evaluation report
(`final/eval_*/eval.json` from launch/eval.py, else `final/eval.json` from training). With `--expect`,
checks the demo's claims: the Side4Video run reaches the accuracy floor and the order-invariant
mean-pool probe stays within a margin of chance; the exit code says whether they hold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def _eval_report(run: Path) -> dict[str, Any]:
    reports = sorted((run / "final").glob("eval_*/eval.json"), key=lambda p: p.stat().st_mtime)
    path = reports[-1] if reports else run / "final" / "eval.json"
    return json.loads(path.read_text())


def _kind(run: Path) -> str:
    return yaml.safe_load((run / "final" / "config.yaml").read_text())["model"]["kind"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s4v report", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="training out_dirs")
    p.add_argument(
        "--expect",
        action="store_true",
        help="check: side4video top-1 >= --min-top1, meanpool within --chance-margin of chance",
    )
    p.add_argument("--min-top1", type=float, default=0.90)
    p.add_argument("--chance-margin", type=float, default=0.10)
    p.add_argument("--since", type=float, default=None, help="unix time the whole job started (for total time)")
    a = p.parse_args(argv)

    ok = True
    print(f"\n{'model':<12} {'views':>5} {'top-1':>7} {'top-5':>7} {'chance':>7} {'steps':>6} {'train s':>8}  verdict")
    for run in a.runs:
        kind, ev = _kind(run), _eval_report(run)
        result = json.loads((run / "result.json").read_text())
        verdict = ""
        if a.expect and kind == "side4video":
            good = ev["top1"] >= a.min_top1
            verdict = f"{'ok' if good else 'FAIL'}: top-1 >= {a.min_top1:.0%}"
        elif a.expect and kind == "meanpool":
            good = abs(ev["top1"] - ev["chance"]) <= a.chance_margin
            verdict = f"{'ok' if good else 'FAIL'}: within {a.chance_margin * 100:.0f} points of chance"
        else:
            good = True
        ok &= good
        print(
            f"{kind:<12} {ev.get('views', '1x1'):>5} {ev['top1']:>7.1%} {ev['top5']:>7.1%} {ev['chance']:>7.1%} "
            f"{result['steps']:>6} {result['wall_s']:>8.0f}  {verdict}"
        )
    if a.since is not None:
        import time

        print(f"total wall time: {time.time() - a.since:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
