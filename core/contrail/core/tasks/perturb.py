"""Answer perturbations for the contrast context C- and counterfactual answers (docs/METHOD.md 2-3).

Every random choice here is a SHA-256 of (purpose, seed, item id): reproducible across processes,
machines and Python versions (unlike `hash()`), and independent per item, so one item's result
never depends on which other items share its job or batch.
"""

from __future__ import annotations

import hashlib
from typing import Final

from contrail.client.types import Item, Perturbation, TaskName

# What the answer slot of C- holds for the 'empty' perturbation. The prompt then reads
# "A: The answer is ." (as the paper's released code does: prompt.format(question, "")).
EMPTY_ANSWER: Final = ""

# Binary tasks: the only wrong answer is the other option (yes<->no, true<->false).
BINARY_CHOICES: Final[dict[TaskName, tuple[str, str]]] = {
    TaskName.STRATEGYQA: ("yes", "no"),
    TaskName.CREAK: ("true", "false"),
}

_WRONG_SALT: Final = "wrong"
_COUNTERFACTUAL_SALT: Final = "counterfactual"
_SELECT_SALT: Final = "counterfactual-select"


class PerturbationError(ValueError):
    """An item offers no wrong answer: free-form without `wrong_answers`."""


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) determined by `parts`."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def answer_options(item: Item, task: TaskName) -> list[str] | None:
    """The item's choices, or the binary pair of its task when a free-form item answers in it."""
    if item.choices is not None:
        return item.choices
    pair = BINARY_CHOICES.get(task)
    if pair is not None and item.answer.casefold() in pair:
        return list(pair)
    return None


def wrong_candidates(item: Item, task: TaskName) -> list[str]:
    """Answers that are not the gold one: other choices, else the item's `wrong_answers`."""
    gold = item.answer.casefold()
    pool = answer_options(item, task) or item.wrong_answers or []
    return [a for a in pool if a.strip() and a.casefold() != gold]


def pick_wrong_answer(item: Item, task: TaskName, seed: int, salt: str = _WRONG_SALT) -> str:
    """One wrong answer, chosen reproducibly per (salt, seed, item id)."""
    candidates = wrong_candidates(item, task)
    if not candidates:
        raise PerturbationError(
            f"item {item.id!r} has no wrong answer: the 'wrong' perturbation and counterfactuals "
            "need answer choices or wrong_answers"
        )
    return candidates[int(unit_hash(salt, seed, item.id) * len(candidates))]


def contrast_answer(item: Item, task: TaskName, perturbation: Perturbation, seed: int) -> str:
    """The answer slot of C- for a factual rationale."""
    if perturbation is Perturbation.EMPTY:
        return EMPTY_ANSWER
    return pick_wrong_answer(item, task, seed)


def is_counterfactual(item_id: str, seed: int, fraction: float) -> bool:
    """Whether this item also gets a counterfactual rationale (about `fraction` of all items)."""
    return fraction > 0.0 and unit_hash(_SELECT_SALT, seed, item_id) < fraction


def counterfactual_answer(item: Item, task: TaskName, seed: int) -> str:
    """The wrong answer ã a counterfactual rationale argues for (own salt: independent of C-)."""
    return pick_wrong_answer(item, task, seed, salt=_COUNTERFACTUAL_SALT)
