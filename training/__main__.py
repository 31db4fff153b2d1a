"""``python -m training``: the same as ``mnist-train``."""

from training.cli import main

raise SystemExit(main())
