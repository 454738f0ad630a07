"""Distributed training (DeepSpeed), exact resume, evaluation. Entry points: `launch/train.py`, `launch/eval.py`."""

from s4v.train.trainer import train

__all__ = ["train"]
