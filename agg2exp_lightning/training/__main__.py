"""``python -m agg2exp_lightning.training``: the same as ``agg2exp-train``."""
from agg2exp_lightning.training import main

if __name__ == "__main__":
    raise SystemExit(main())
