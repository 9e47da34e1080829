"""Training examples of a student, as token ids with their loss mask, for each objective.

- `scott`: factual records learn their whole target, "[factual] <rationale> So the answer is
  <answer>" and the end-of-text token; counterfactual records (a rationale written for a wrong
  answer) learn **only their answer and the end-of-text token**, with the rationale given in the
  prompt (teacher forcing through the rationale, as the reference release's answer-only loss).
- `factual`: factual records only, whole target.
- `answer`: no rationale, the standard fine-tuning baseline: "[factual] So the answer is <answer>".

The prompt and the completion are tokenized apart and concatenated, so the boundary between what
is given and what is learned is exact (a tokenizer that merged across it would move the mask).
The prompt/completion text is the TRL export's (`adapters.prompt_completion`), so a model trained
here and one trained with TRL on the export see the same rows.

A seq2seq student (`decoder_start` given) reads the same row in two halves: its encoder gets
the question ("[tag] <question> \\n <options>" and the end of line, with the tokenizer's own
special tokens, e.g. T5's "</s>"), its decoder the rest. What the decoder is given (a
counterfactual row's "[counterfactual] <rationale> So the answer is") is in its inputs and masked
in its labels, as the reference release's T5 answer-only loss: teacher forcing through the
rationale.

A row is a dataset record or a row of the student export (`export.StudentRow`, the same
input and target text): `contrail train` learns the same examples from either.

The split into train and dev is by item (`export.split_of`): an item's factual and
counterfactual rows always land together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar

from contrail.client.types import RationaleRecord, Tag
from contrail.distill.adapters import ANSWER_PREFIX
from contrail.distill.export import Split, StudentRow, split_of, student_input, student_target

Objective = Literal["scott", "factual", "answer"]
OBJECTIVES: Final[tuple[Objective, ...]] = ("scott", "factual", "answer")
Kind = Literal["factual", "counterfactual"]
IGNORE: Final = -100  # the label transformers' cross-entropy skips


class Tokenizer(Protocol):
    """What is used of a Hugging Face tokenizer."""

    eos_token_id: int | None

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Example:
    item_id: str
    kind: Kind
    input_ids: list[int]  # a causal student's whole row; a seq2seq student's encoder input
    labels: list[int]  # IGNORE where nothing is learned (aligned with the decoder's inputs)
    decoder_input_ids: list[int] | None = None  # seq2seq only: start token + target[:-1]

    @property
    def learned(self) -> list[int]:
        return [t for t in self.labels if t != IGNORE]

    @property
    def length(self) -> int:
        """The longer sequence the model reads (what the length bound applies to)."""
        return max(len(self.input_ids), len(self.decoder_input_ids or ()))


@dataclass(frozen=True)
class Examples:
    """The examples of one split, and the records left out (and why)."""

    examples: list[Example]
    too_long: int
    not_for_objective: int


Row = RationaleRecord | StudentRow
R = TypeVar("R", bound=Row)


@dataclass(frozen=True)
class _Text:
    """What every objective reads of a row: the student's input and target text."""

    input: str
    target: str
    counterfactual: bool
    answer: str


def _is_counterfactual(row: Row) -> bool:
    return row.tag == Tag.COUNTERFACTUAL  # a record's Tag or an export row's str


def _text(row: Row) -> _Text:
    if isinstance(row, StudentRow):
        return _Text(row.input, row.target, _is_counterfactual(row), row.answer)
    return _Text(student_input(row), student_target(row), _is_counterfactual(row), row.answer)


def texts(row: Row, objective: Objective) -> tuple[str, str] | None:
    """(prompt, completion) of `row` under `objective`, None when the objective does not learn
    from it (counterfactual rows outside `scott`). The TRL export's prompt/completion
    (`adapters.prompt_completion`): a counterfactual row's completion is its answer alone."""
    t = _text(row)
    prompt = f"{t.input}\n"
    if t.counterfactual:
        if objective != "scott":
            return None
        answer = f" {t.answer}"
        if not t.target.endswith(f"{ANSWER_PREFIX}{answer}"):
            raise ValueError(f"the target of {row.item_id} does not end with its answer")
        return prompt + t.target[: -len(answer)], answer
    if objective == "answer":
        return prompt, f"[factual] {ANSWER_PREFIX} {t.answer}"
    return prompt, t.target


def encoder_text(row: Row) -> str:
    """What a seq2seq student's encoder reads: the start of every prompt of `row`."""
    return f"{_text(row).input}\n"


def encode(
    tokenizer: Tokenizer,
    record: Row,
    objective: Objective,
    *,
    decoder_start: int | None = None,
) -> Example | None:
    """The example of `record` (a record or an export row): one sequence for a causal student,
    encoder input and decoder target for a seq2seq one (`decoder_start`, its decoder's first
    token)."""
    pair = texts(record, objective)
    if pair is None:
        return None
    if tokenizer.eos_token_id is None:
        raise ValueError("the student's tokenizer has no end-of-text token")
    completion = [*tokenizer.encode(pair[1], add_special_tokens=False), tokenizer.eos_token_id]
    kind: Kind = "counterfactual" if _is_counterfactual(record) else "factual"
    if decoder_start is None:
        prompt = tokenizer.encode(pair[0], add_special_tokens=False)
        return Example(
            record.item_id, kind, prompt + completion, [IGNORE] * len(prompt) + completion
        )
    source = encoder_text(record)
    if not pair[0].startswith(source):  # every objective's prompt starts with the question
        raise AssertionError(f"the prompt of {record.item_id} does not start with its question")
    given_text = pair[0][len(source) :]  # the prompt past the question: given to the decoder
    given = tokenizer.encode(given_text, add_special_tokens=False) if given_text else []
    target = given + completion
    return Example(
        item_id=record.item_id,
        kind=kind,
        input_ids=tokenizer.encode(source),
        labels=[IGNORE] * len(given) + completion,
        decoder_input_ids=[decoder_start, *target[:-1]],
    )


def build_examples(
    records: Sequence[Row],
    tokenizer: Tokenizer,
    objective: Objective,
    *,
    max_tokens: int,
    decoder_start: int | None = None,
) -> Examples:
    """The examples of `records` (those with an error are skipped by the caller's loader too).
    A row longer than `max_tokens` is left out whole: truncating it would cut its answer, which
    is what every objective learns."""
    out: list[Example] = []
    too_long = skipped = 0
    for rec in records:
        if isinstance(rec, RationaleRecord) and rec.error is not None:
            continue
        ex = encode(tokenizer, rec, objective, decoder_start=decoder_start)
        if ex is None:
            skipped += 1
        elif ex.length > max_tokens:
            too_long += 1
        else:
            out.append(ex)
    return Examples(out, too_long=too_long, not_for_objective=skipped)


def split_records(records: Sequence[R], *, dev_fraction: float, seed: int) -> dict[Split, list[R]]:
    """Records (or export rows) by split, by item: the export's split, with the same seed the
    same items. Records with an error are left out."""
    out: dict[Split, list[R]] = {"train": [], "dev": []}
    for rec in records:
        if isinstance(rec, StudentRow) or rec.error is None:
            out[split_of(rec.item_id, dev_fraction, seed)].append(rec)
    return out


__all__ = [
    "IGNORE",
    "OBJECTIVES",
    "Example",
    "Examples",
    "Kind",
    "Objective",
    "Row",
    "build_examples",
    "encode",
    "encoder_text",
    "split_records",
    "texts",
]
