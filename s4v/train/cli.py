"""Command lines of `launch/train.py` and `launch/eval.py` (the scripts only call these)."""

from __future__ import annotations

import argparse

import yaml


def split_overrides(items: list[str]) -> tuple[list[str], dict[str, object]]:
    """`key=value` items: `ds.`-prefixed ones patch the DeepSpeed JSON, the rest the run config."""
    run, ds = [], {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {item!r}")
        if key.startswith("ds."):
            ds[key[3:]] = yaml.safe_load(raw)
        else:
            run.append(item)
    return run, ds


def train_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="launch/train.py",
        description="Train a side network on a frozen backbone (run under `deepspeed`, torchrun or plain python).",
        epilog="overrides: section.key=value (e.g. optim.lr=1e-4 data.root=/data/ssv2), "
        "ds.key=value patches the DeepSpeed JSON (e.g. ds.bf16.enabled=true)",
    )
    p.add_argument("--config", help="run config YAML (configs/*.yaml); defaults if omitted")
    p.add_argument("--ds", default="ds_configs/cpu.json", help="DeepSpeed JSON: precision, ZeRO, communication")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from the latest checkpoint of train.out_dir, or from the given checkpoint dir",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from s4v.config import load_config
    from s4v.train.distributed import shutdown_distributed
    from s4v.train.trainer import train

    run, ds = split_overrides(args.overrides)
    try:
        result = train(load_config(args.config, run), args.ds, ds, args.resume)
    finally:
        shutdown_distributed()
    return 0 if result["steps"] > 0 else 1


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launch/eval.py", description="Multi-view evaluation of a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="run's final/ dir or a checkpoints/step_* dir")
    p.add_argument("--views", default="1x1", help="CROPSxCLIPS, e.g. 3x2 (crops: 1 or 3)")
    p.add_argument("--out", default=None, help="report directory (default: <checkpoint>/eval_<views>)")
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="compute dtype (default fp32 on CPU, fp16 on GPU)",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides, e.g. data.root=...")
    args = p.parse_args(argv)
    from s4v.train.distributed import shutdown_distributed
    from s4v.train.eval_job import evaluate_checkpoint

    try:
        evaluate_checkpoint(args.checkpoint, args.views, args.overrides, args.out, args.dtype)
    finally:
        shutdown_distributed()
    return 0
