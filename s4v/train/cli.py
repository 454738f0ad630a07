"""Command lines of `launch/train.py` and `launch/eval.py` (the scripts only call these).

Both read and check the run config, the data root and the weights file before importing the trainer,
so a mistake is reported as one line (`error: ...`, exit 2) in a fraction of a second instead of after
the process group, the loaders and the model exist. `--debug` or S4V_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from s4v.core.errors import DEBUG_ENV, DEBUG_FLAG, UserError, entry_point
from s4v.core.preemption import EXIT_STOPPED

DEBUG_HELP = f"{DEBUG_FLAG} (or {DEBUG_ENV}=1): show the traceback of a configuration or input error"


def split_overrides(items: list[str]) -> tuple[list[str], dict[str, object]]:
    """`key=value` items: `ds.`-prefixed ones patch the DeepSpeed JSON, the rest the run config."""
    run, ds = [], {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not of the form key=value")
        if key.startswith("ds."):
            try:
                ds[key[3:]] = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise UserError(f"override {item!r}: the value is not valid YAML") from None
        else:
            run.append(item)
    return run, ds


@entry_point
def train_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="launch/train.py",
        description="Train a side network on a frozen backbone (run under `deepspeed`, torchrun or plain python).",
        epilog="overrides: section.key=value (e.g. optim.lr=1e-4 data.root=/data/ssv2), "
        f"ds.key=value patches the DeepSpeed JSON (e.g. ds.bf16.enabled=true). {DEBUG_HELP}",
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
    from s4v.config import check_paths, load_run

    run, ds = split_overrides(args.overrides)
    cfg, members = load_run(args.config, run)
    check_paths(cfg)
    if not Path(args.ds).is_file():
        raise UserError(f"--ds {args.ds!r}: DeepSpeed JSON not found")
    # Imported only now: torch, DeepSpeed and the data stack take seconds to load.
    from s4v.train.distributed import shutdown_distributed
    from s4v.train.trainer import Trainer

    try:
        result = Trainer(cfg, args.ds, ds, args.resume, members).train()
    finally:
        shutdown_distributed()
    if "stopped" in result:
        return EXIT_STOPPED
    return 0 if result["steps"] > 0 else 1


@entry_point
def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="launch/eval.py", description="Multi-view evaluation of a trained checkpoint.", epilog=DEBUG_HELP
    )
    p.add_argument(
        "--checkpoint", required=True, help="run's final/ dir, a checkpoints/step_* dir, or a sweep's out_dir"
    )
    p.add_argument("--views", default="1x1", help="CROPSxCLIPS, e.g. 3x2 (crops: 1 or 3)")
    p.add_argument("--out", default=None, help="report directory (default: <checkpoint>/eval_<views>)")
    p.add_argument(
        "--dtype",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="compute dtype (default fp32 on CPU, fp16 on GPU)",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=None,
        metavar="N",
        help="a sweep's out_dir only: also score the mean softmax of its N best members by selection metric "
        "(halving rungs, else best validation metric), beside the best member",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides, e.g. data.root=...")
    args = p.parse_args(argv)
    from s4v.config import check_paths, is_sweep_root, load_config
    from s4v.data.config import parse_views
    from s4v.train.ensemble import select_ensemble

    directory = Path(args.checkpoint)
    if not directory.is_dir():
        raise UserError(f"--checkpoint {str(directory)!r}: no such directory")
    if args.ensemble is not None:
        select_ensemble(directory, args.ensemble)  # the same selection the job takes, checked before torch loads
    if not is_sweep_root(directory):
        if not (directory / "config.yaml").is_file():
            raise UserError(
                f"--checkpoint {str(directory)!r}: not a checkpoint directory (no config.yaml); "
                "pass a run's final/ or a checkpoints/step_* directory"
            )
        crops, clips = parse_views(args.views)
        # The same config the evaluation job loads, checked here while nothing heavy is imported yet.
        views = [f"data.test_crops={crops}", f"data.test_clips={clips}"]
        check_paths(load_config(directory / "config.yaml", [*args.overrides, *views]))
    from s4v.train.distributed import shutdown_distributed
    from s4v.train.eval_job import evaluate

    try:
        evaluate(directory, args.views, args.overrides, args.out, args.dtype, args.ensemble)
    finally:
        shutdown_distributed()
    return 0
