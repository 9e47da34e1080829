"""Items + DecodingSettings -> DecodeRequests -> RationaleRecords (METHOD.md sections 1-3).

`plan` builds every prompt pair up front (cheap string work, no model); an engine decodes the
requests; `to_records` turns each result back into a record, or an ItemError when decoding failed.
`generate` chains the three in batches for callers that just want records.

No torch here: this module only speaks the Engine interface of `contrail.worker.engine.base`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, get_args

from contrail.client.types import (
    DecodingMode,
    DecodingSettings,
    Demonstration,
    ErrorCode,
    FinishReason,
    Item,
    ItemError,
    Perturbation,
    RationaleRecord,
    RecordDecoding,
    Tag,
    TaskName,
)
from contrail.core.tasks.demos import DemoSelector, demonstration_pool
from contrail.core.tasks.perturb import (
    EMPTY_ANSWER,
    PerturbationError,
    contrast_answer,
    counterfactual_answer,
    is_counterfactual,
)
from contrail.core.tasks.prompts import PromptTemplate, build_prompt
from contrail.worker.engine.base import ContrastSettings, DecodeRequest, DecodeResult, Engine

_ERROR_CODES: Final = frozenset(get_args(ErrorCode))
_ID_SEPARATOR: Final = "#"


def request_id(item_id: str, tag: Tag) -> str:
    """ "<item id>#<tag>": unique per job because item ids are, and the tag is the last part."""
    return f"{item_id}{_ID_SEPARATOR}{tag.value}"


def split_request_id(rid: str) -> tuple[str, Tag]:
    """Inverse of `request_id` (item ids may themselves contain '#')."""
    item_id, _, tag = rid.rpartition(_ID_SEPARATOR)
    return item_id, Tag(tag)


@dataclass(frozen=True)
class PlannedRequest:
    """One request and what a record needs to know about it."""

    request: DecodeRequest
    item: Item
    tag: Tag
    answer: str  # the answer slot of C+: the rationale argues for it
    contrast_answer: str | None  # the answer slot of C-; None in greedy mode


@dataclass
class Plan:
    task: TaskName
    settings: DecodingSettings
    model_name: str
    requests: list[PlannedRequest] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)

    @property
    def decode_requests(self) -> list[DecodeRequest]:
        return [p.request for p in self.requests]

    def by_request_id(self) -> dict[str, PlannedRequest]:
        return {p.request.request_id: p for p in self.requests}


def contrast_settings(settings: DecodingSettings) -> ContrastSettings:
    return ContrastSettings(
        lam=settings.lam,
        alpha=settings.alpha,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        stop=tuple(settings.stop),
    )


def _answer_slots(
    item: Item, task: TaskName, settings: DecodingSettings
) -> Iterator[tuple[Tag, str, str | None]]:
    """(tag, C+ answer, C- answer) of each rationale this item needs; raises PerturbationError."""
    greedy = settings.mode is DecodingMode.GREEDY
    negative = None if greedy else contrast_answer(item, task, settings.perturbation, settings.seed)
    yield Tag.FACTUAL, item.answer, negative
    if is_counterfactual(item.id, settings.seed, settings.counterfactual_fraction):
        wrong = counterfactual_answer(item, task, settings.seed)
        # Roles swap (METHOD.md 3): C+ argues for the wrong answer, C- holds the gold one.
        if greedy:
            yield Tag.COUNTERFACTUAL, wrong, None
        elif settings.perturbation is Perturbation.EMPTY:
            yield Tag.COUNTERFACTUAL, wrong, EMPTY_ANSWER
        else:
            yield Tag.COUNTERFACTUAL, wrong, item.answer


def plan(
    items: Iterable[Item],
    task: TaskName,
    settings: DecodingSettings,
    model_name: str,
    demonstrations: Sequence[Demonstration] | None = None,
    template: str | PromptTemplate | None = None,
) -> Plan:
    """Every DecodeRequest of a job, plus an ItemError for each item that cannot be planned.

    Raises TemplateError for an invalid `template` (validate it when the job is submitted).
    """
    items = list(items)
    block_template = PromptTemplate(template) if isinstance(template, str) else template
    pool = demonstration_pool(task, items, demonstrations)
    selector = DemoSelector(pool, settings.num_demonstrations, settings.seed)
    decode_settings = contrast_settings(settings)
    job = Plan(task=task, settings=settings, model_name=model_name)
    for item in items:
        demos = selector.for_query(item)
        try:
            for tag, answer, negative in _answer_slots(item, task, settings):
                pos = build_prompt(task, item, answer, demos, block_template)
                neg = (
                    None
                    if negative is None
                    else build_prompt(task, item, negative, demos, block_template)
                )
                request = DecodeRequest(request_id(item.id, tag), pos, neg, decode_settings)
                job.requests.append(PlannedRequest(request, item, tag, answer, negative))
        except PerturbationError as exc:
            # A factual failure implies the counterfactual one (same candidates): one error.
            job.errors.append(
                ItemError(
                    item_id=item.id, field="wrong_answers", code="invalid_item", message=str(exc)
                )
            )
    return job


def record_decoding(settings: DecodingSettings, negative: str | None) -> RecordDecoding:
    contrastive = settings.mode is DecodingMode.CONTRASTIVE
    return RecordDecoding.model_validate(
        {
            "mode": settings.mode,
            "perturbation": settings.perturbation if contrastive else None,
            "contrast_answer": negative,
            "lambda": settings.lam if contrastive else None,
            "alpha": settings.alpha if contrastive else None,
            "temperature": settings.temperature,
            "max_new_tokens": settings.max_new_tokens,
            "seed": settings.seed,
        }
    )


def error_code(message: str | None) -> str:
    """Engines report "<code>: <detail>"; unknown or missing codes become engine_error."""
    code = (message or "").split(":", 1)[0].strip()
    return code if code in _ERROR_CODES else "engine_error"


def _result_error(planned: PlannedRequest, result: DecodeResult) -> ItemError:
    message = result.error or "decoding failed"
    return ItemError(
        item_id=planned.item.id,
        code=error_code(result.error),
        message=f"{planned.tag.value} rationale: {message}",
    )


def to_record(
    job: Plan, planned: PlannedRequest, result: DecodeResult
) -> RationaleRecord | ItemError:
    if result.finish_reason is FinishReason.ERROR:
        return _result_error(planned, result)
    item = planned.item
    return RationaleRecord(
        item_id=item.id,
        task=job.task,
        question=item.question,
        choices=item.choices,
        gold_answer=item.answer,
        answer=planned.answer,
        tag=planned.tag,
        # The engine's text starts with the space that follows "The answer is X."
        rationale=result.text.strip(),
        decoding=record_decoding(job.settings, planned.contrast_answer),
        model=job.model_name,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        continuations=result.continuations,
        error=result.error,
    )


def to_records(job: Plan, results: Iterable[DecodeResult]) -> list[RationaleRecord | ItemError]:
    """Records for results, in result order. A result for a request not in the plan is a bug."""
    planned = job.by_request_id()
    out: list[RationaleRecord | ItemError] = []
    for result in results:
        if result.request_id not in planned:
            raise ValueError(f"result for unknown request {result.request_id!r}")
        out.append(to_record(job, planned[result.request_id], result))
    return out


def decode_batch(
    engine: Engine, job: Plan, batch: Sequence[PlannedRequest]
) -> list[RationaleRecord | ItemError]:
    results = {r.request_id: r for r in engine.generate([p.request for p in batch])}
    out: list[RationaleRecord | ItemError] = []
    for planned in batch:
        result = results.get(planned.request.request_id)
        if result is None:  # breaks the Engine contract; never lose the item silently
            result = DecodeResult(
                planned.request.request_id,
                [],
                "",
                FinishReason.ERROR,
                error="engine_error: no result",
            )
        out.append(to_record(job, planned, result))
    return out


def generate(
    engine: Engine,
    items: Iterable[Item],
    task: TaskName,
    settings: DecodingSettings,
    *,
    demonstrations: Sequence[Demonstration] | None = None,
    template: str | PromptTemplate | None = None,
    batch_size: int = 64,
) -> Iterator[RationaleRecord | ItemError]:
    """Plan the job, then decode `batch_size` requests at a time, yielding as batches finish.

    Planning errors come first. All items are planned together because demonstrations may be
    drawn from the items themselves and must be the same for every batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    job = plan(items, task, settings, engine.model_name, demonstrations, template)
    yield from job.errors
    for start in range(0, len(job.requests), batch_size):
        yield from decode_batch(engine, job, job.requests[start : start + batch_size])
