"""Few-shot rationalisation prompts in the exact format of docs/METHOD.md section 1.

    Q: <question>
    Answer Choices:
    (a) <choice>
    ...
    A: The answer is <answer>. <rationale>

Blocks are separated by one blank line; the query block stops right after "<answer>." with no
trailing space, because the teacher continues with " <rationale>" (a leading space, as in every
demonstration). CREAK claims read "A: The statement is <true|false>.".

Choices are shown for multiple-choice tasks only. StrategyQA and CREAK are binary and show none:
the paper's released StrategyQA and CREAK prompts list no options, and with the yes/no (true/false)
answer stated in the answer sentence a choices list adds tokens and no information.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from typing import Final

from contrail.client.types import Demonstration, Item, TaskName
from contrail.core.tasks.perturb import BINARY_CHOICES

CHOICES_HEADER: Final = "Answer Choices:"
BLOCK_SEPARATOR: Final = "\n\n"


class TemplateError(ValueError):
    """A user template that cannot render a query block."""


def answer_sentence(task: TaskName, answer: str) -> str:
    """The "A: ..." line up to and including the answer's full stop."""
    subject = "statement" if task is TaskName.CREAK else "answer"
    return f"A: The {subject} is {answer}."


def choice_label(index: int) -> str:
    """(a), (b), ... (z), then numbers for the rare user task with more than 26 options."""
    return chr(ord("a") + index) if index < 26 else str(index + 1)


def format_choices(choices: Sequence[str]) -> str:
    """The option lines "(a) x\\n(b) y" without the header."""
    return "\n".join(f"({choice_label(i)}) {c}" for i, c in enumerate(choices))


def shows_choices(task: TaskName, choices: Sequence[str] | None) -> bool:
    return bool(choices) and task not in BINARY_CHOICES


class PromptTemplate:
    """A user's block template: a `str.format` string with {question}, {choices} and {answer}.

    It renders one block up to the end of the answer sentence; demonstrations get " <rationale>"
    appended. {choices} is the option lines "(a) x\\n(b) y" ("" for items without choices). Example:
    "Question: {question}\\nOptions:\\n{choices}\\nAnswer: {answer}."
    """

    FIELDS: Final = frozenset({"question", "choices", "answer"})

    def __init__(self, text: str) -> None:
        self.text = text
        self._validate()

    def _validate(self) -> None:
        try:
            fields = [
                (name, spec, conversion)
                for _, name, spec, conversion in string.Formatter().parse(self.text)
                if name is not None
            ]
        except ValueError as exc:
            raise TemplateError(f"template is not a valid format string: {exc}") from exc
        # A format spec or conversion lets a short template render to any size ("{question:>
        # 999999999}" is a 1 GB prompt) or call repr; plain placeholders keep a rendered block
        # within the template's length plus its fields'.
        for name, spec, conversion in fields:
            if spec or conversion:
                shown = (
                    name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                )
                raise TemplateError(
                    f"template placeholder {{{shown}}} has a format spec or conversion; only "
                    "plain {question}, {choices} and {answer} are allowed"
                )
        names = [name for name, _, _ in fields]
        unknown = sorted({n for n in names if n not in self.FIELDS})
        if unknown:
            raise TemplateError(
                f"template uses unknown placeholders {unknown}; allowed: {{question}}, "
                "{choices}, {answer} (write literal braces as {{ and }})"
            )
        if "question" not in names:
            raise TemplateError("template must contain {question}")
        if names.count("answer") != 1:
            # C+ and C- must differ only in the answer slot.
            raise TemplateError("template must contain {answer} exactly once")
        try:
            sample = self.render("q", ["x", "y"], "a")
        except (ValueError, KeyError, IndexError) as exc:
            raise TemplateError(f"template cannot be rendered: {exc}") from exc
        if sample != sample.rstrip():
            raise TemplateError(
                "template must not end with whitespace: the rationale continues with ' '"
            )

    def render(self, question: str, choices: Sequence[str] | None, answer: str) -> str:
        return self.text.format(
            question=question, choices=format_choices(choices or []), answer=answer
        )


def render_block(
    task: TaskName,
    question: str,
    choices: Sequence[str] | None,
    answer: str,
    rationale: str | None = None,
    template: PromptTemplate | None = None,
) -> str:
    """One block: a demonstration when `rationale` is given, else the query."""
    if template is not None:
        head = template.render(question.strip(), choices, answer)
    else:
        lines = [f"Q: {question.strip()}"]
        if shows_choices(task, choices):
            lines += [CHOICES_HEADER, format_choices(choices or [])]
        lines.append(answer_sentence(task, answer))
        head = "\n".join(lines)
    if rationale is None:
        return head
    # One line: a blank line or "\nQ:" inside a demonstration would read as a stop string.
    return f"{head} {' '.join(rationale.split())}"


@functools.lru_cache(maxsize=512)
def _demonstration_block(
    task: TaskName,
    question: str,
    choices: tuple[str, ...] | None,
    answer: str,
    rationale: str,
    template: PromptTemplate | None,
) -> str:
    return render_block(task, question, choices, answer, rationale, template)


def demonstration_block(
    task: TaskName, demonstration: Demonstration, template: PromptTemplate | None = None
) -> str:
    """A demonstration's block, rendered once per distinct demonstration: every prompt of a job
    repeats the same few, and rendering them was most of a decode worker's CPU per item
    (bench/scale.py). 512 entries bound the cache: demonstrations are bounded in size and
    number per job (docs/API.md)."""
    d = demonstration
    choices = tuple(d.choices) if d.choices is not None else None
    return _demonstration_block(task, d.question, choices, d.answer, d.rationale, template)


def demonstrations_length(
    task: TaskName, demonstrations: Sequence[Demonstration], template: PromptTemplate | None = None
) -> int:
    """Characters the demonstration blocks (and their separators) add before a query block."""
    return sum(
        len(demonstration_block(task, d, template)) + len(BLOCK_SEPARATOR) for d in demonstrations
    )


def build_prompt(
    task: TaskName,
    query: Item,
    answer: str,
    demonstrations: Sequence[Demonstration],
    template: PromptTemplate | None = None,
) -> str:
    """Demonstrations then the query, whose answer slot holds `answer` (gold, wrong or "")."""
    blocks = [demonstration_block(task, d, template) for d in demonstrations]
    blocks.append(render_block(task, query.question, query.choices, answer, None, template))
    return BLOCK_SEPARATOR.join(blocks)
