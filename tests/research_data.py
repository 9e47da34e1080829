"""Where the tests find the research datasets (CREAK, StrategyQA, CommonsenseQA with CoS-E): a
`shared/data` folder beside the checkout on development and CI machines, never in the product
(docs/DEVELOPING.md). Real-data tests carry `needs_data`; in CI a skip fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data not present")
