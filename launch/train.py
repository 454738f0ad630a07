"""Train: `deepspeed launch/train.py --ds ds_configs/vite.json --config configs/ssv2_vite.yaml [key=value ...]`."""

import sys

from s4v.train.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
