"""``python -m contrail.worker.models [NAME] [--cache-dir DIR] [--force]``."""

from contrail.worker.models.resolve import main

raise SystemExit(main())
