"""Items + DecodingSettings -> DecodeRequests -> RationaleRecords (docs/METHOD.md sections 1-3).

`plan` builds every prompt pair up front (cheap string work, no model); an engine decodes the
requests; `to_records` turns each result back into a record, or an ItemError when decoding failed.
`generate` chains the three in batches for callers that just want records.

No torch here: this module only speaks the Engine interface of `contrail.worker.engine.base`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from contrail.client.types import (
    DecodingMode,
    DecodingSettings,
    Demonstration,
    FinishReason,
    Item,
    ItemError,
    Perturbation,
    RationaleRecord,
    RecordDecoding,
    Tag,
    TaskName,
)
from contrail.core.jobs.sizing import owed_tags
from contrail.core.tasks.demos import DemoSelector, demonstration_pool
from contrail.core.tasks.perturb import (
    EMPTY_ANSWER,
    PerturbationError,
    contrast_answer,
    counterfactual_answer,
)
from contrail.core.tasks.prompts import (
    PromptTemplate,
    build_prompt,
    demonstrations_length,
    render_block,
)
from contrail.worker.engine.base import ContrastSettings, DecodeRequest, DecodeResult, Engine
from contrail.worker.generation.item_errors import (
    error_code,
    item_error,
    log_engine_errors,
    message,
)

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


def contrast_settings(settings: DecodingSettings) -> ContrastSettings:
    return ContrastSettings(
        lam=settings.lam,
        alpha=settings.alpha,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        stop=tuple(settings.stop),
    )


def _answer_slot(
    item: Item, task: TaskName, settings: DecodingSettings, tag: Tag
) -> tuple[str, str | None]:
    """(C+ answer, C- answer) of one rationale; raises PerturbationError."""
    greedy = settings.mode is DecodingMode.GREEDY
    if tag is Tag.FACTUAL:
        negative = (
            None if greedy else contrast_answer(item, task, settings.perturbation, settings.seed)
        )
        return item.answer, negative
    wrong = counterfactual_answer(item, task, settings.seed)
    # Roles swap (docs/METHOD.md 3): C+ argues for the wrong answer, C- holds the gold one.
    if greedy:
        return wrong, None
    if settings.perturbation is Perturbation.EMPTY:
        return wrong, EMPTY_ANSWER
    return wrong, item.answer


def plan(
    items: Iterable[Item],
    task: TaskName,
    settings: DecodingSettings,
    model_name: str,
    demonstrations: Sequence[Demonstration] | None = None,
    template: str | PromptTemplate | None = None,
    max_prompt_chars: int | None = None,
) -> Plan:
    """Every DecodeRequest of a job, plus an ItemError for each rationale that cannot be
    planned (so requests + errors = the rationales the items owe).

    A rationale whose C+ or C- prompt would be longer than `max_prompt_chars` (the engine's
    `max_prompt_chars`: it cannot fit the context) is a prompt_too_long error, decided from the
    blocks' lengths before the prompt is assembled or tokenized.

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
        demo_chars = demonstrations_length(task, demos, block_template)
        for tag in owed_tags(item.id, settings):
            try:
                answer, negative = _answer_slot(item, task, settings, tag)
            except PerturbationError:
                job.errors.append(
                    item_error("invalid_item", item_id=item.id, tag=tag, field="wrong_answers")
                )
                continue
            slots = [answer] if negative is None else [answer, negative]
            if max_prompt_chars is not None and any(
                demo_chars
                + len(render_block(task, item.question, item.choices, a, None, block_template))
                > max_prompt_chars
                for a in slots
            ):
                job.errors.append(item_error("prompt_too_long", item_id=item.id, tag=tag))
                continue
            pos = build_prompt(task, item, answer, demos, block_template)
            neg = (
                None
                if negative is None
                else build_prompt(task, item, negative, demos, block_template)
            )
            request = DecodeRequest(request_id(item.id, tag), pos, neg, decode_settings)
            job.requests.append(PlannedRequest(request, item, tag, answer, negative))
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


def _result_error(planned: PlannedRequest, result: DecodeResult) -> ItemError:
    """The tenant's error for a failed result: its code's message, never the engine's detail
    (that goes to the worker log, see `to_records`)."""
    return item_error(error_code(result.error), item_id=planned.item.id, tag=planned.tag)


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
        error=None if result.error is None else message(error_code(result.error)),
    )


def match_results(
    planned: Sequence[PlannedRequest], results: Iterable[DecodeResult]
) -> list[tuple[PlannedRequest, DecodeResult]]:
    """Pair each planned request with its result by request id, in planned order. A missing
    result (an engine breaking its contract) becomes an error result, never a lost item; a
    result for a request that was not planned is a bug."""
    by_id = {p.request.request_id: p for p in planned}
    found: dict[str, DecodeResult] = {}
    for result in results:
        if result.request_id not in by_id:
            raise ValueError(f"result for unknown request {result.request_id!r}")
        found[result.request_id] = result
    return [
        (
            p,
            found.get(p.request.request_id)
            or DecodeResult(
                p.request.request_id, [], "", FinishReason.ERROR, error="engine_error: no result"
            ),
        )
        for p in planned
    ]


def to_records(
    job: Plan, results: Iterable[DecodeResult], planned: Sequence[PlannedRequest] | None = None
) -> list[RationaleRecord | ItemError]:
    """One record (or ItemError) per planned request (all of the plan's by default)."""
    pairs = match_results(job.requests if planned is None else planned, results)
    log_engine_errors((p.item.id, r.error) for p, r in pairs if r.error is not None)
    return [to_record(job, p, result) for p, result in pairs]


def decode_batch(
    engine: Engine, job: Plan, batch: Sequence[PlannedRequest]
) -> list[RationaleRecord | ItemError]:
    return to_records(job, engine.generate([p.request for p in batch]), batch)


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
    job = plan(
        items, task, settings, engine.model_name, demonstrations, template, engine.max_prompt_chars
    )
    yield from job.errors
    for start in range(0, len(job.requests), batch_size):
        yield from decode_batch(engine, job, job.requests[start : start + batch_size])
