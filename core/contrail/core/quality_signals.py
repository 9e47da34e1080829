"""Cheap per-record quality signals of a rationale (no model; docs/QUALITY.md defines them).

Shared by the workers (job finalization, `contrail eval`) and the API (the viewer shows them per
record), so it lives in the torch-free core.

- **length**: words (whitespace-separated) and the record's `completion_tokens`.
- **restates** (restates the question/answer without adding information): the rationale's content
  words are its lower-cased alphanumeric words minus a fixed English stop-word list and
  one-character words, with a trailing plural "s" dropped from words longer than three letters.
  `overlap` = share of the rationale's content-word *occurrences* whose word also occurs among the
  content words of the question, the answer choices and the rationalised answer. A record
  *restates* when it has no content word at all or `overlap >= RESTATE_THRESHOLD` (0.8): at most
  one content word in five is new.
- **names another choice**: the rationale names an answer option other than the one it is
  meant to support (the record's `answer`). Multiple choice: another choice's text occurs as a
  whole phrase (case-insensitive), unless that text also occurs in the question or inside the
  supported answer (then naming it says nothing). Binary tasks (yes/no, true/false), where the
  bare words are everywhere: an explicit verdict for the other option, i.e. "answer/statement/
  claim is [not] <option>" (with "not" flipping the option) or the rationale opening with the
  other option ("No, ...").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from pydantic import BaseModel

from contrail.client.types import RationaleRecord
from contrail.core.tasks.perturb import BINARY_CHOICES

RESTATE_THRESHOLD: Final = 0.8

_STOPWORDS_TEXT: Final = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them themselves
    then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves yes true false
    answer statement claim question one many much may might must can't don't doesn't isn't
    aren't wasn't weren't won't would've it's there's"""
STOPWORDS: Final = frozenset(_STOPWORDS_TEXT.split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def content_words(text: str) -> list[str]:
    """Content-word occurrences of `text`, normalised as the module docstring defines."""
    out: list[str] = []
    for raw in _WORD.findall(text.lower()):
        word = raw.removesuffix("'s")
        if len(word) <= 1 or word in STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def restatement_overlap(rationale: str, context: Iterable[str]) -> tuple[int, float]:
    """(number of content words in the rationale, share of them found in `context`'s)."""
    words = content_words(rationale)
    if not words:
        return 0, 1.0
    known: set[str] = set()
    for text in context:
        known.update(content_words(text))
    return len(words), sum(w in known for w in words) / len(words)


def answer_options(record: RationaleRecord) -> list[str] | None:
    """The record's answer options: its choices, else its task's binary pair, else None."""
    if record.choices:
        return list(record.choices)
    pair = BINARY_CHOICES.get(record.task)
    if pair is not None and record.answer.casefold() in pair:
        return list(pair)
    return None


def _phrase(text: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])" + re.escape(text.strip().lower()) + r"(?![\w])")


def _binary_verdicts(rationale: str, pair: Sequence[str]) -> set[str]:
    """Options the rationale explicitly declares (see the module docstring)."""
    low = rationale.lower()
    a, b = (p.lower() for p in pair)
    other = {a: b, b: a}
    found: set[str] = set()
    alts = "|".join(re.escape(p) for p in (a, b))
    verdict = re.compile(rf"\b(?:answer|statement|claim)\s+(?:is|was)\s+(not\s+)?({alts})\b")
    for m in verdict.finditer(low):
        found.add(other[m.group(2)] if m.group(1) else m.group(2))
    opening = re.match(rf"\s*({alts})\b", low)
    if opening:
        found.add(opening.group(1))
    return found


def names_other_choice(record: RationaleRecord) -> bool | None:
    """Whether the rationale names an option other than the one it supports (None: no options)."""
    options = answer_options(record)
    if options is None:
        return None
    supported = record.answer.strip().lower()
    pair = BINARY_CHOICES.get(record.task)
    if len(options) == 2 and pair is not None and {o.lower() for o in options} == set(pair):
        return any(v != supported for v in _binary_verdicts(record.rationale, pair))
    rationale = record.rationale.lower()
    question = record.question.lower()
    for option in options:
        low = option.strip().lower()
        if low == supported or not low:
            continue
        pattern = _phrase(low)
        if pattern.search(supported) or pattern.search(question):
            continue
        if pattern.search(rationale):
            return True
    return False


class RecordSignals(BaseModel):
    """The cheap signals of one record."""

    item_id: str
    tag: str
    words: int
    tokens: int
    content_words: int
    overlap: float
    restates: bool
    names_other_choice: bool | None


def record_signals(record: RationaleRecord, threshold: float = RESTATE_THRESHOLD) -> RecordSignals:
    context = [record.question, record.answer, *(record.choices or [])]
    n_content, overlap = restatement_overlap(record.rationale, context)
    return RecordSignals(
        item_id=record.item_id,
        tag=record.tag.value,
        words=len(record.rationale.split()),
        tokens=record.completion_tokens,
        content_words=n_content,
        overlap=round(overlap, 4),
        restates=n_content == 0 or overlap >= threshold,
        names_other_choice=names_other_choice(record),
    )


class SignalSummary(BaseModel):
    """Aggregate cheap signals over a dataset's scored records."""

    records: int
    mean_words: float
    median_words: float
    mean_tokens: float
    mean_overlap: float
    restate_rate: float
    names_other_choice_rate: float | None
    names_other_choice_checked: int
    restate_threshold: float = RESTATE_THRESHOLD


class SignalTotals:
    """Running totals of records' signals: `summary()` equals `summarize_signals` of every record
    added, in memory bounded by the number of distinct word counts (the median comes from a
    histogram), however many records are added. The job finalizer streams a dataset through one
    of these per tag."""

    def __init__(self) -> None:
        self.n = 0
        self.words: Counter[int] = Counter()
        self.sum_words = 0
        self.sum_tokens = 0
        self.sum_overlap = 0.0  # added in record order, as sum() over a list would
        self.restates = 0
        self.checked = 0
        self.named = 0

    def add(self, s: RecordSignals) -> None:
        self.n += 1
        self.words[s.words] += 1
        self.sum_words += s.words
        self.sum_tokens += s.tokens
        self.sum_overlap += s.overlap
        self.restates += s.restates
        if s.names_other_choice is not None:
            self.checked += 1
            self.named += s.names_other_choice

    def _word_at(self, index: int) -> int:
        """The index-th smallest word count."""
        seen = 0
        for words in sorted(self.words):
            seen += self.words[words]
            if index < seen:
                return words
        raise IndexError(index)

    def summary(self) -> SignalSummary:
        n = self.n
        if n == 0:
            return SignalSummary(
                records=0,
                mean_words=0.0,
                median_words=0.0,
                mean_tokens=0.0,
                mean_overlap=0.0,
                restate_rate=0.0,
                names_other_choice_rate=None,
                names_other_choice_checked=0,
            )
        mid = n // 2
        median = (
            float(self._word_at(mid))
            if n % 2
            else (self._word_at(mid - 1) + self._word_at(mid)) / 2
        )
        return SignalSummary(
            records=n,
            mean_words=round(self.sum_words / n, 3),
            median_words=median,
            mean_tokens=round(self.sum_tokens / n, 3),
            mean_overlap=round(self.sum_overlap / n, 4),
            restate_rate=round(self.restates / n, 4),
            names_other_choice_rate=round(self.named / self.checked, 4) if self.checked else None,
            names_other_choice_checked=self.checked,
        )


def summarize_signals(signals: Sequence[RecordSignals]) -> SignalSummary:
    totals = SignalTotals()
    for s in signals:
        totals.add(s)
    return totals.summary()


__all__ = [
    "RESTATE_THRESHOLD",
    "RecordSignals",
    "SignalSummary",
    "SignalTotals",
    "answer_options",
    "content_words",
    "names_other_choice",
    "record_signals",
    "restatement_overlap",
    "summarize_signals",
]
