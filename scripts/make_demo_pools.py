#!/usr/bin/env python
"""Build the committed demonstration pools (core/contrail/core/data/<task>.jsonl) from the
shared datasets.

Deterministic: candidates pass a light quality filter, are ordered by a SHA-256 of their id and the
first POOL_SIZE are kept (binary tasks alternate labels so the pool is balanced). Rerunning gives
byte-identical files. The product never reads the shared data at run time; only this script does.

    .venv/bin/python scripts/make_demo_pools.py [--data ../shared/data] \
        [--out core/contrail/core/data]
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from contrail.client.types import Item, TaskName
from contrail.core.tasks.formats import load_items

POOL_SIZE = 24
REPO = Path(__file__).resolve().parents[1]
SENTENCE = re.compile(r"[A-Z][^\n]*[a-z0-9)]\.")


def _order(item: Item) -> str:
    return hashlib.sha256(f"contrail-demo-pool:{item.id}".encode()).hexdigest()


def is_clean_sentence(text: str, min_words: int = 6, max_words: int = 40) -> bool:
    """A plain full sentence: capitalised, ends with a period, ASCII, no shouting, no "I"."""
    words = text.split()
    return (
        SENTENCE.fullmatch(text) is not None
        and text.isascii()
        and "  " not in text
        and not any(mark in text for mark in ("?", "|", ":", "..."))
        and min_words <= len(words) <= max_words
        and not text.isupper()
        and not {"I", "I'm", "We", "You"} & set(words)
    )


def csqa_ok(item: Item) -> bool:
    # CoS-E is noisy: keep explanations that are a sentence and name the answer they support.
    r = item.rationale or ""
    return (
        is_clean_sentence(r, 8, 30)
        and item.answer.lower() in r.lower()
        and "answer" not in r.lower()
    )


def strategyqa_ok(item: Item) -> bool:
    return is_clean_sentence(item.rationale or "", 8, 45) and len(item.question) <= 120


# Explanations that argue about the label or the sentence instead of the world ("this is true
# because...", "one can do some research") teach the teacher vacuous rationales.
VACUOUS = re.compile(
    r"\b(true|false|sentence|statement|claim|wikipedia|google|research|my)\b", re.I
)


def creak_ok(item: Item) -> bool:
    r = item.rationale or ""
    return (
        is_clean_sentence(r, 6, 30)
        and VACUOUS.search(r) is None
        and r.split()[0] not in ("It", "This", "That", "They")
    )


def select(items: Iterable[Item], ok: Callable[[Item], bool], balance: bool) -> list[Item]:
    """The first POOL_SIZE passing items in hash order; alternating answers when `balance`."""
    ranked = sorted((i for i in items if ok(i)), key=_order)
    if not balance:
        return ranked[:POOL_SIZE]
    by_answer: dict[str, list[Item]] = {}
    for item in ranked:
        by_answer.setdefault(item.answer, []).append(item)
    labels = sorted(by_answer)
    picked = [by_answer[labels[n % len(labels)]][n // len(labels)] for n in range(POOL_SIZE)]
    return picked


def tidy(item: Item) -> Item:
    # The sources keep stray double and trailing spaces in questions; a prompt should not.
    return item.model_copy(update={"question": " ".join(item.question.split())})


def write_pool(path: Path, items: list[Item]) -> None:
    lines = [tidy(i).model_dump_json(exclude_none=True, exclude={"wrong_answers"}) for i in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{path}: {len(items)} demonstrations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "core" / "contrail" / "core" / "data")
    args = parser.parse_args()
    data: Path = args.data

    csqa = load_items(
        data / "csqa" / "train_rand_split.jsonl",
        TaskName.CSQA,
        explanations=data / "csqa" / "cose_train_v1.0.jsonl",
    )
    strategyqa = load_items(data / "strategyqa" / "train.json", TaskName.STRATEGYQA)
    creak = load_items(data / "creak" / "train.json", TaskName.CREAK)
    for name, loaded in (("csqa", csqa), ("strategyqa", strategyqa), ("creak", creak)):
        if loaded.errors:
            raise SystemExit(f"{name}: {len(loaded.errors)} bad records, first {loaded.errors[0]}")

    write_pool(args.out / "csqa.jsonl", select(csqa.items, csqa_ok, balance=False))
    write_pool(args.out / "strategyqa.jsonl", select(strategyqa.items, strategyqa_ok, True))
    write_pool(args.out / "creak.jsonl", select(creak.items, creak_ok, balance=True))


if __name__ == "__main__":
    main()
