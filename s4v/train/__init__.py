"""Distributed training (DeepSpeed), exact resume, evaluation. Entry points: `launch/train.py`, `launch/eval.py`."""
