"""``python -m contrail.distill eval|export ...``: the evaluation entry point without the CLI."""

from __future__ import annotations

import sys

from contrail.distill.report import main

if __name__ == "__main__":
    sys.exit(main())
