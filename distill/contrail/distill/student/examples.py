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

The split into train and dev is by item (`export.split_of`): an item's factual and
counterfactual rows always land together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from contrail.client.types import RationaleRecord, Tag
from contrail.distill.adapters import ANSWER_PREFIX, prompt_completion
from contrail.distill.export import Split, split_of, student_input

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


def texts(record: RationaleRecord, objective: Objective) -> tuple[str, str] | None:
    """(prompt, completion) of `record` under `objective`, None when the objective does not
    learn from it (counterfactual records outside `scott`)."""
    if record.tag is Tag.COUNTERFACTUAL:
        return prompt_completion(record) if objective == "scott" else None
    if objective == "answer":
        return f"{student_input(record)}\n", f"[factual] {ANSWER_PREFIX} {record.answer}"
    return prompt_completion(record)


def encoder_text(record: RationaleRecord) -> str:
    """What a seq2seq student's encoder reads: the start of every prompt of `record`."""
    return f"{student_input(record)}\n"


def encode(
    tokenizer: Tokenizer,
    record: RationaleRecord,
    objective: Objective,
    *,
    decoder_start: int | None = None,
) -> Example | None:
    """The example of `record`: one sequence for a causal student, encoder input and decoder
    target for a seq2seq one (`decoder_start`, its decoder's first token)."""
    pair = texts(record, objective)
    if pair is None:
        return None
    if tokenizer.eos_token_id is None:
        raise ValueError("the student's tokenizer has no end-of-text token")
    completion = [*tokenizer.encode(pair[1], add_special_tokens=False), tokenizer.eos_token_id]
    kind: Kind = "counterfactual" if record.tag is Tag.COUNTERFACTUAL else "factual"
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
    records: Sequence[RationaleRecord],
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
        if rec.error is not None:
            continue
        ex = encode(tokenizer, rec, objective, decoder_start=decoder_start)
        if ex is None:
            skipped += 1
        elif ex.length > max_tokens:
            too_long += 1
        else:
            out.append(ex)
    return Examples(out, too_long=too_long, not_for_objective=skipped)


def split_records(
    records: Sequence[RationaleRecord], *, dev_fraction: float, seed: int
) -> dict[Split, list[RationaleRecord]]:
    """Records by split, by item (the export's split: same seed, same items)."""
    out: dict[Split, list[RationaleRecord]] = {"train": [], "dev": []}
    for rec in records:
        if rec.error is None:
            out[split_of(rec.item_id, dev_fraction, seed)].append(rec)
    return out


__all__ = [
    "IGNORE",
    "OBJECTIVES",
    "Example",
    "Examples",
    "Kind",
    "Objective",
    "build_examples",
    "encode",
    "encoder_text",
    "split_records",
    "texts",
]
