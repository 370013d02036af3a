"""Post-hoc model audit; see `python audit.py --help` (same as the `agg2exp-audit` command)."""
from agg2exp_lightning.audit.cli import main

raise SystemExit(main())
