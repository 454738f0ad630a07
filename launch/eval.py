"""Evaluate: `python launch/eval.py --checkpoint runs/NAME/final --views 3x2` (or under a launcher)."""

import sys

from s4v.train.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
