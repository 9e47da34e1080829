"""Where the tests find the research datasets (CREAK, StrategyQA, CommonsenseQA with CoS-E):
tests/data/research in the repository, the dev splits and a few training items with their
licenses (SOURCES.md there). No test reads anything outside the checkout
(tests/test_self_contained.py); benchmarks read the full splits from a folder of their own."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "research"
