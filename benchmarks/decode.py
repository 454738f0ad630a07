"""Decoding throughput on the synthetic set: DALI CPU vs PyAV (and DALI NVDEC when a GPU is present).

Two levels, both on the same videos and the same frame indices (8-frame segment clips):
  decode  frames/s of the decoders alone (PyAV in one thread; DALI with 1 and with N threads)
  loader  clips/s of `build_loader` (train split: decode + RandomResizedCrop + normalise), per backend
Prints a table with the DALI/PyAV ratios and writes JSON.

    python benchmarks/decode.py [--root DIR] [--threads N] [--json outputs/bench_decode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from s4v.data import DataConfig, build_loader
from s4v.data.dali import DaliVideoDecoder
from s4v.data.decode import decode_frames, probe, read_bytes
from s4v.data.sampling import segment_indices
from s4v.data.synth import generate


def _videos(root: Path, num_frames: int) -> tuple[list[str], list[bytes], list[np.ndarray]]:
    paths = sorted(str(p) for p in root.glob("*.webm"))
    datas = [read_bytes(p) for p in paths]
    indices = [segment_indices(probe(p, d), num_frames) for p, d in zip(paths, datas, strict=True)]
    return paths, datas, indices


def bench_pyav(paths, datas, indices, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        for p, d, i in zip(paths, datas, indices, strict=True):
            decode_frames(p, i, d)
    return repeats * sum(len(i) for i in indices) / (time.perf_counter() - t0)


def bench_dali(datas, indices, repeats: int, threads: int, device: str, batch: int = 32) -> float:
    dec = DaliVideoDecoder(batch, threads, device)
    dec.decode(datas[:batch], indices[:batch])  # build + warm up
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        for k in range(0, len(datas), batch):
            dec.decode(datas[k : k + batch], indices[k : k + batch])
    if device != "cpu":
        torch.cuda.synchronize()
    return repeats * sum(len(i) for i in indices) / (time.perf_counter() - t0)


def bench_loader(root: Path, backend: str, workers: int, device: str, epochs: int) -> float:
    cfg = DataConfig(
        root=str(root), num_frames=8, image_size=64, batch_size=32, backend=backend, num_workers=workers, device=device
    )
    loader = build_loader(cfg, "train")
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            n += batch["video"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, help="synthetic set (default: generate one in a temp dir)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=Path("outputs/bench_decode.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.root or Path(tmp)
        if a.root is None:
            generate(root)
        paths, datas, indices = _videos(root, 8)
        res: dict[str, float] = {
            "pyav_decode_fps_1thread": bench_pyav(paths, datas, indices, a.repeats),
            "dali_cpu_decode_fps_1thread": bench_dali(datas, indices, a.repeats, 1, "cpu"),
            f"dali_cpu_decode_fps_{a.threads}threads": bench_dali(datas, indices, a.repeats, a.threads, "cpu"),
        }
        cuda = torch.cuda.is_available()
        if cuda:
            res["dali_nvdec_decode_fps"] = bench_dali(datas, indices, a.repeats, a.threads, "cuda")
        res[f"loader_pyav_clips_per_s_{a.threads}workers"] = bench_loader(root, "pyav", a.threads, "cpu", a.repeats)
        res["loader_dali_cpu_clips_per_s"] = bench_loader(root, "dali", a.threads, "cpu", a.repeats)
        if cuda:
            res["loader_dali_nvdec_clips_per_s"] = bench_loader(root, "dali", a.threads, "cuda", a.repeats)
    pyav = res["pyav_decode_fps_1thread"]
    print(f"{len(paths)} videos (VP9 64x64, 16 frames), 8-frame segment clips, {a.threads} threads")
    print(f"{'measure':<40} {'value':>10}  ratio")
    for k, v in res.items():
        ratio = f"{v / pyav:5.2f}x PyAV" if "decode" in k else ""
        print(f"{k:<40} {v:>10.0f}  {ratio}")
    ratio = res["dali_cpu_decode_fps_1thread"] / pyav
    print(f"DALI CPU / PyAV decode ratio (1 thread each): {ratio:.2f}")
    out = {
        "videos": len(paths),
        "threads": a.threads,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "results": res,
        "dali_cpu_over_pyav_1thread": ratio,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
