"""Full-size ViT-E/14: load a 9.4 GB EVA-CLIP ViT-E/14 checkpoint into e14-light and run one bf16 training step on CPU.

    python benchmarks/e14_scale.py write --cache /work/cache/e14             # both layouts, once (~10 GB each)
    python benchmarks/e14_scale.py verify                                     # BAAI layout == open_clip layout (tiny)
    python benchmarks/e14_scale.py run --cache /work/cache/e14               # random init + both layouts
    python benchmarks/e14_scale.py run --cache /work/cache/e14 --layout open_clip \\
        --code /tmp/before-8860f21 --cap-gib 18                               # another checkout, address space capped

`write` stores the whole ViT-E/14 CLIP state dict (every key of open_clip's model of `BACKBONES["e14"]`,
text tower included) as random fp16 values in a torch zip file, open_clip's layout (`visual.trunk.*`) and/or
BAAI's native EVA-CLIP layout (`visual.blocks.N.*`, what `EVA02_CLIP_E_psz14_*.pt` holds). Tensors are generated
one at a time and streamed into the archive (`torch._C.PyTorchFileWriter`, the writer `torch.save` uses, CRCs
included), behind a pickle `torch.save` produced for fake tensors of the same shapes; so the writer holds one
tensor, not 9.4 GB. The values are seeded by tensor name: both layouts hold the same numbers.

`run` measures each case in a fresh process, so its peak RSS (`VmHWM`) is that case's alone: build
`create_model("e14-light", 174, checkpoint=FILE, frozen_dtype=bf16)`, then train as the trainer does
(`prepare_for_dtype`: side network in bf16) with an AdamW step on fp32 master weights (`MasterAdamW`, what
DeepSpeed's bf16 optimizer keeps and what the accounting's "bf16" precision models), batch 1 x 8 frames.
The checkpoint's pages are dropped from the page cache first (`posix_fadvise`), so load time includes the disk.
Beside it, the accounting (`s4v.memory.step.account_step`, meta tensors) of the same step.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

GiB = 1024**3
LAYOUTS = ("open_clip", "baai")
PRESET, BACKBONE, NUM_CLASSES = "e14-light", "e14", 174
DTYPE = torch.float16  # the released ViT-E/14 open_clip files are fp16
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmPeak")
ISSUE_OLD = (
    "old code (issue author, this machine): build 88 s / 18.5 GiB; 9.4 GB checkpoint load OOM-killed at 23.2 GiB"
)


# --- names and values ---------------------------------------------------------------------------------------


def clip_shapes(backbone: str) -> dict[str, torch.Size]:
    """Every key of the open_clip CLIP state dict of `backbone`, with its shape (built on the meta device)."""
    from s4v.models import build_clip

    return {k: v.shape for k, v in build_clip(backbone, device="meta").state_dict().items()}


# open_clip (timm Eva) -> BAAI EVA-CLIP names inside a block: the inverse of timm's `checkpoint_filter_fn`
# renames (BAAI's eva_vit_model.py: `inner_attn_ln`, `ffn_ln`, SwiGLU `w1/w2/w3`, separate `q_bias/v_bias`).
# ViT-E/14 (fused qkv, plain GELU MLP, no sub-LN) needs none of them: only the prefix changes.
_BAAI_RENAMES = (
    (".attn.q_proj.bias", ".attn.q_bias"),
    (".attn.v_proj.bias", ".attn.v_bias"),
    (".attn.norm.", ".attn.inner_attn_ln."),
    (".mlp.norm.", ".mlp.ffn_ln."),
    (".mlp.fc1_g.", ".mlp.w1."),
    (".mlp.fc1_x.", ".mlp.w2."),
)


def baai_names(names: list[str]) -> dict[str, str]:
    """open_clip name -> BAAI native name (visual tower renamed; text tower and logit scale keep theirs)."""
    swiglu = any(".mlp.fc1_g." in n for n in names)  # BAAI's SwiGLU calls the output projection w3
    out = {}
    for name in names:
        if not name.startswith("visual.trunk."):
            out[name] = name
            continue
        key = "visual." + name.removeprefix("visual.trunk.")
        for ours, theirs in _BAAI_RENAMES + (((".mlp.fc2.", ".mlp.w3."),) if swiglu else ()):
            key = key.replace(ours, theirs)
        out[name] = key
    return out


def check_baai_names(backbone: str) -> int:
    """timm's filter (what s4v's loader runs) maps our BAAI names back to open_clip's, for every visual key."""
    from s4v.models import build_clip
    from s4v.models.checkpoint import _eva_names

    model = build_clip(backbone, device="meta")
    shapes = clip_shapes(backbone)
    names = baai_names(list(shapes))
    back = _eva_names({names[k]: s for k, s in shapes.items()}, model)  # open_clip name -> file key
    if back != names:
        wrong = sorted(k for k in names if back.get(k) != names[k])[:5]
        raise AssertionError(f"BAAI names do not map back for {backbone}: {wrong}")
    return sum(names[k] != k for k in names)


def value(name: str, shape: torch.Size, seed: int = 0) -> torch.Tensor:
    """The tensor stored under `name`: seeded by the name, so any tensor can be recomputed to check a load.

    Norm weights near 1, everything else N(0, 0.02^2) (biases included), logit scale as CLIP's init: the
    random tower stays numerically tame through 64 post-norm blocks in bf16.
    """
    if name == "logit_scale":
        return torch.full(shape, math.log(1 / 0.07), dtype=DTYPE)
    g = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
    t = torch.randn(shape, generator=g, dtype=DTYPE).mul_(0.02)
    is_norm = len(shape) == 1 and name.endswith(".weight") and ("norm" in name or ".ln_" in name or "ln_final" in name)
    return t.add_(1) if is_norm else t


# --- writer ---------------------------------------------------------------------------------------------------


class _Storage:
    """A storage of the archive, by key: pickled as the persistent id `torch.save` writes for it."""

    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    """A contiguous fp16 tensor of a storage: pickles as `torch.save` pickles a real one (no data)."""

    def __init__(self, storage: _Storage, shape: torch.Size) -> None:
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self) -> tuple:
        stride = torch.empty(self.shape, device="meta").stride()
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple | None:
        if isinstance(obj, _Storage):
            # A fresh location string per storage, as torch.save's: a shared one would be memoized (other bytes).
            return "storage", torch.HalfStorage, obj.key, str(torch.device("cpu")), obj.numel
        return None


def _pickle_for(keys: dict[str, torch.Size]) -> bytes:
    """`data.pkl` of `torch.save(state)` for fp16 tensors of these shapes, one storage each, numbered in order.

    Written without any tensor: `torch.save` under `skip_data(materialize_fake_tensors=True)` gives the same
    bytes (`verify` compares them on a small tower) but allocates every storage (9.5 GiB for ViT-E/14).
    """
    state = {k: _Tensor(_Storage(str(i), math.prod(s)), s) for i, (k, s) in enumerate(keys.items())}
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)  # torch.save's default protocol
    return buf.getvalue()


def _torch_pickle_for(keys: dict[str, torch.Size]) -> bytes:
    """`data.pkl` as `torch.save` itself writes it, for fake tensors (allocates them: small towers only)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fakes = {k: torch.empty(s, dtype=DTYPE) for k, s in keys.items()}
    buf = io.BytesIO()
    with torch.serialization.skip_data(materialize_fake_tensors=True):
        torch.save(fakes, buf)
    archive = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    return archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))


def write_checkpoint(path: Path, names: dict[str, str], shapes: dict[str, torch.Size], seed: int = 0) -> dict:
    """Stream the state dict into `path` (file keys `names[k]`), one generated tensor in memory at a time."""
    t0 = time.perf_counter()
    stored = {names[k]: s for k, s in shapes.items()}
    pickle = _pickle_for(stored)
    partial = path.with_name(path.name + ".partial")
    writer = torch._C.PyTorchFileWriter(str(partial), True, 64)
    writer.write_record("data.pkl", pickle, len(pickle))
    for record, text in ((".format_version", "1"), (".storage_alignment", "64"), ("byteorder", sys.byteorder)):
        writer.write_record(record, text, len(text))
    for index, (name, shape) in enumerate(shapes.items()):  # torch.save numbers storages in pickling order
        t = value(name, shape, seed)
        writer.write_record(f"data/{index}", t.untyped_storage(), t.untyped_storage().nbytes())
    writer.write_end_of_file()
    del writer
    _drop_cache(partial, sync=True)  # written pages leave the page cache: the machine is shared
    partial.rename(path)
    return dict(file=str(path), bytes=path.stat().st_size, write_s=round(time.perf_counter() - t0, 1))


def _drop_cache(path: Path, sync: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if sync:
            os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def checkpoint_path(cache: Path, layout: str, backbone: str = BACKBONE) -> Path:
    return cache / f"{backbone}-{layout}-fp16.pt"


def write_layouts(cache: Path, layouts: tuple[str, ...], backbone: str = BACKBONE) -> list[dict]:
    cache.mkdir(parents=True, exist_ok=True)
    shapes = clip_shapes(backbone)
    rows = []
    for layout in layouts:
        path = checkpoint_path(cache, layout, backbone)
        if path.is_file():
            rows.append(dict(file=str(path), bytes=path.stat().st_size, write_s=None, note="present, kept"))
            continue
        names = baai_names(list(shapes)) if layout == "baai" else {k: k for k in shapes}
        rows.append(dict(write_checkpoint(path, names, shapes), layout=layout))
    return rows


# --- one measurement (its own process) -------------------------------------------------------------------------


def proc_status() -> dict[str, float]:
    """GiB of the VmHWM / VmRSS / RssAnon / RssFile / RssShmem / VmPeak lines of /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_KEYS:
            out[key] = int(rest.split()[0]) * 1024 / GiB
    return out


class RssSampler(threading.Thread):
    """Largest VmRSS / RssAnon / RssFile seen per phase, sampled every `period` s (file-backed pages apart)."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period, self.phase, self.peaks = period, "start", {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.period):
            now = proc_status()
            peak = self.peaks.setdefault(self.phase, {})
            for key in ("VmRSS", "RssAnon", "RssFile"):
                peak[key] = round(max(peak.get(key, 0.0), now[key]), 3)

    def stop(self) -> dict[str, dict[str, float]]:
        self._done.set()
        self.join()
        return self.peaks


def _phase_hooks(sampler: RssSampler) -> None:
    """Mark the checkpoint read as its own phase (whichever checkout's loader calls torch.load)."""
    load = torch.load

    def marked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        before, sampler.phase = sampler.phase, "torch.load"
        try:
            return load(*args, **kwargs)
        finally:
            sampler.phase = before

    torch.load = marked


def spot_check(model: torch.nn.Module, seed: int = 0) -> int:
    """The loaded tower holds the file's values (bf16 of the fp16 ones) at a few tensors; returns how many."""
    own = dict(model.backbone.visual.named_parameters())
    names = [n for n in own if n.endswith(("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"))]
    names += [n for n in own if n.endswith(("blocks.63.mlp.fc2.weight", "trunk.head.weight", "blocks.31.attn.q_bias"))]
    for n in names:
        expected = value(f"visual.{n}", own[n].shape, seed).to(own[n].dtype)
        if not torch.equal(own[n], expected):
            raise AssertionError(f"loaded {n} differs from the file's values")
    return len(names)


def measure(checkpoint: str | None, steps: int, batch: int, frames: int, seed: int) -> dict:
    """Load, then train `steps` steps; RSS figures in GiB, times in s. Runs in a fresh process (`run` spawns it)."""
    import torch.nn.functional as F

    import s4v
    from s4v.memory.step import MasterAdamW
    from s4v.models import create_model
    from s4v.train.precision import prepare_for_dtype

    out: dict = dict(s4v=str(Path(s4v.__file__).parent), checkpoint=checkpoint, threads=torch.get_num_threads())
    out["at_start"] = proc_status()
    sampler = RssSampler()
    sampler.start()
    _phase_hooks(sampler)
    start = t0 = time.perf_counter()
    try:
        sampler.phase = "build"
        model = create_model(PRESET, NUM_CLASSES, checkpoint=checkpoint, frozen_dtype=torch.bfloat16)
        out["load_s"] = round(time.perf_counter() - t0, 1)
        out["after_load"] = proc_status()
        sampler.phase = "prepare"
        view = prepare_for_dtype(model, torch.bfloat16)  # the trainer's path: side network in bf16 too
        model.train()
        opt = MasterAdamW([p for p in view.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.15)
        size = model.backbone.shape.image_size
        gen = torch.Generator().manual_seed(seed)
        video = torch.randn(batch, frames, 3, size, size, generator=gen)
        labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
        out["before_step"] = proc_status()
        out["step_s"], out["loss"] = [], []
        for step in range(steps):
            sampler.phase = f"step {step + 1}"
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(video).float(), labels, label_smoothing=0.1)
            loss.backward()
            opt.step()
            opt.zero_grad()
            out["step_s"].append(round(time.perf_counter() - t0, 1))
            out["loss"].append(round(loss.item(), 4))
            out[f"after_step_{step + 1}"] = proc_status()
        sampler.phase = "checks"
        out["spot_checked"] = spot_check(model, seed) if checkpoint else 0
        out["side_params"] = sum(p.numel() for p in model.trainable_parameters())
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001  (a capped "before" run: report how far it got)
        out["ok"], out["error"] = False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        out["failed_after_s"] = round(time.perf_counter() - start, 1)
    out["phases"] = sampler.stop()
    out["end"] = proc_status()
    return out


def spawn(
    checkpoint: Path | None, args: argparse.Namespace, code: str | None, cap_gib: float | None
) -> tuple[dict, float]:
    """`measure` in a fresh interpreter (optionally another checkout's `s4v`, address space capped)."""
    if checkpoint is not None:
        _drop_cache(checkpoint)  # a cold load: the pages come from disk
    cmd = [sys.executable, __file__, "measure", "--steps", str(args.steps), "--seed", str(args.seed)]
    cmd += ["--checkpoint", str(checkpoint)] if checkpoint else []
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    if cap_gib:
        cmd = ["prlimit", f"--as={int(cap_gib * GiB)}", "--", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return dict(ok=False, error=f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"), wall
    return json.loads(lines[-1]), wall


# --- the accounting of the same step ----------------------------------------------------------------------------


def accounting(attention: str, batch: int, frames: int) -> dict:
    from s4v.memory.step import account_step
    from s4v.memory.workloads import MethodSpec, workload

    mem = account_step(workload(MethodSpec("ours-light", BACKBONE, batch, frames=frames)), "bf16", attention)
    side = mem.trainable_weights + mem.grads + mem.optimizer_states
    return dict(
        attention=attention,
        frozen_gib=mem.frozen_weights / GiB,
        side_state_gib=side / GiB,
        activations_gib=(mem.saved_activations + mem.inputs) / GiB,
        peak_gib=mem.peak / GiB,
        side_params=mem.trainable_params,
    )


# --- reports ---------------------------------------------------------------------------------------------------


def table(rows: list[tuple[str, dict, float]], acc: dict, steps: int) -> str:
    target = 1.25 * (acc["frozen_gib"] + acc["side_state_gib"])
    head = [
        "| case | load (s) | peak RSS after load (GiB) | peak RSS after step (GiB) | step time (s) "
        "| target 1.25 x (tower + side) (GiB) | peak / (tower + side) | accounting step peak (GiB) "
        "| measured step peak - RSS at start (GiB) | wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = []
    for case, r, wall in rows:
        if not r.get("ok"):
            got = r.get("phases", {})
            peak = max((p["VmRSS"] for p in got.values()), default=float("nan"))
            where = next(reversed(got), "?") if got else "?"
            lines.append(
                f"| {case} | failed after {r.get('failed_after_s', '?')} s in {where}: {r.get('error', '')} "
                f"| peak {peak:.2f} | - | - | {target:.2f} | - | {acc['peak_gib']:.2f} | - | {wall:.0f} |"
            )
            continue
        last = r[f"after_step_{steps}"]
        lines.append(
            f"| {case} | {r['load_s']:.1f} | {r['after_load']['VmHWM']:.2f} | {last['VmHWM']:.2f} "
            f"| {' / '.join(f'{s:.1f}' for s in r['step_s'])} | {target:.2f} "
            f"| {last['VmHWM'] / (target / 1.25):.3f} | {acc['peak_gib']:.2f} "
            f"| {last['VmHWM'] - r['at_start']['VmRSS']:.2f} | {wall:.0f} |"
        )
    return "\n".join(head + lines)


def phase_table(rows: list[tuple[str, dict, float]]) -> str:
    lines = ["| case | phase | max VmRSS | max RssAnon | max RssFile |", "|---|---|---:|---:|---:|"]
    for case, r, _ in rows:
        for phase, p in r.get("phases", {}).items():
            lines.append(f"| {case} | {phase} | {p['VmRSS']:.2f} | {p['RssAnon']:.2f} | {p['RssFile']:.2f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cache = Path(args.cache)
    cases: list[tuple[str, Path | None]] = [] if args.no_random else [("random init", None)]
    for layout in _layouts(args.layout):
        path = checkpoint_path(cache, layout)
        if not path.is_file():
            print(f"missing {path}: run `write` first", file=sys.stderr)
            return 2
        cases.append((f"{layout} fp16 file", path))
    t0 = time.perf_counter()
    accs = {a: accounting(a, args.batch, args.frames) for a in ("flash", "math")}
    print(f"accounting ({time.perf_counter() - t0:.0f} s): " + json.dumps(accs), flush=True)
    rows = []
    for case, path in cases:
        result, wall = spawn(path, args, args.code, args.cap_gib)
        label = case + (f" [{args.code}, cap {args.cap_gib} GiB]" if args.code or args.cap_gib else "")
        rows.append((label, result, wall))
        print(json.dumps(dict(case=label, wall_s=round(wall, 1), **result)), flush=True)
    acc = accs[args.attention]
    report = [
        f"\n### e14-light, batch {args.batch} x {args.frames} frames, bf16 (tower and side network), "
        f"MasterAdamW, CPU ({torch.get_num_threads()} threads)\n",
        table(rows, acc, args.steps),
        f"\nAccounting (meta tensors, bf16, {acc['attention']} attention): frozen tower {acc['frozen_gib']:.2f} GiB, "
        f"side state (bf16 weights + bf16 grads + fp32 master + Adam moments, {acc['side_params'] / 1e6:.1f} M "
        f"params) {acc['side_state_gib']:.2f} GiB, saved activations + inputs {acc['activations_gib']:.2f} GiB, "
        f"step peak {acc['peak_gib']:.2f} GiB (math attention: {accs['math']['peak_gib']:.2f} GiB).",
        "\nRSS by phase (GiB, sampled every 50 ms):\n",
        phase_table(rows),
        f"\n{ISSUE_OLD}",
    ]
    print("\n".join(report))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(accounting=accs, rows=rows), indent=1) + "\n".join(report))
    return 0


# --- small-tower check ----------------------------------------------------------------------------------------


def verify(backbone: str = "tiny-eva") -> str:
    """Writer and BAAI names on a small EVA tower: both layouts load (s4v's streamed loader) to the same model,
    which holds exactly the written values; and timm's filter maps every ViT-E/14 BAAI name back."""
    import tempfile

    from s4v.models import build_clip

    renamed = check_baai_names(BACKBONE)
    shapes = clip_shapes(backbone)
    assert _pickle_for(shapes) == _torch_pickle_for(shapes), "data.pkl differs from torch.save's"
    with tempfile.TemporaryDirectory() as tmp:
        write_layouts(Path(tmp), LAYOUTS, backbone)
        loaded = {
            lay: build_clip(backbone, checkpoint=str(checkpoint_path(Path(tmp), lay, backbone)), dtype=torch.bfloat16)
            for lay in LAYOUTS
        }
        reread = torch.load(checkpoint_path(Path(tmp), "open_clip", backbone), mmap=True, weights_only=True)
    assert list(reread) == list(shapes), "key order"
    for k, s in shapes.items():
        assert torch.equal(reread[k], value(k, s)), f"written {k}"
    a, b = (dict(loaded[lay].named_parameters()) for lay in LAYOUTS)
    for k in a:
        expected = value(k, a[k].shape).to(a[k].dtype if k.startswith("visual.") else torch.float32)
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], expected), f"loaded {k}"
    return f"ok: {backbone} file == values, baai load == open_clip load ({len(a)} params); e14: {renamed} keys renamed"


def _layouts(choice: str) -> tuple[str, ...]:
    return LAYOUTS if choice == "both" else (choice,)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the full-size checkpoint(s) once")
    r = sub.add_parser("run", help="measure load + training step, each case in a fresh process")
    for p in (w, r):
        p.add_argument("--cache", required=True, help="directory of the checkpoints (outside the repo)")
        p.add_argument("--layout", default="both", choices=[*LAYOUTS, "both"])
    r.add_argument("--steps", type=int, default=1)
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--frames", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--attention", default="flash", choices=["flash", "math"], help="the accounting's headline kernel")
    r.add_argument("--no-random", action="store_true", help="skip the random-init (no checkpoint) row")
    r.add_argument("--code", help="another checkout to measure (put first on PYTHONPATH), e.g. a git worktree")
    r.add_argument("--cap-gib", type=float, help="address-space cap of the measured process (prlimit --as)")
    r.add_argument("--out", help="also write the rows and the report here (JSON + markdown)")
    v = sub.add_parser("verify", help="check writer and BAAI names on a tiny EVA tower")
    v.add_argument("--backbone", default="tiny-eva")
    m = sub.add_parser("measure", help="one measurement in this process (what `run` spawns); prints JSON")
    m.add_argument("--checkpoint")
    m.add_argument("--steps", type=int, default=1)
    m.add_argument("--batch", type=int, default=1)
    m.add_argument("--frames", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "write":
        t0 = time.perf_counter()
        for row in write_layouts(Path(args.cache), _layouts(args.layout)):
            print(json.dumps(row), flush=True)
        peak = proc_status()["VmHWM"]
        print(f"writer: {time.perf_counter() - t0:.0f} s, peak RSS {peak:.2f} GiB")
        return 0
    if args.cmd == "verify":
        print(verify(args.backbone))
        return 0
    if args.cmd == "measure":
        print(json.dumps(measure(args.checkpoint, args.steps, args.batch, args.frames, args.seed)), flush=True)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
