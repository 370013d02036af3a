#!/usr/bin/env python
"""Train Swin-UNETR on the thorax labels: `python train.py demo` or `python train.py --config configs/paper.yaml`."""
from agg2exp_lightning.training import main

if __name__ == "__main__":
    raise SystemExit(main())
