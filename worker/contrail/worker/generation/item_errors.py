"""What a tenant reads when a rationale fails: a stable code and a message written for them.

Engines report a failed request as ``"<code>: <detail>"``. The detail is for operators (token
counts against an internal limit, exception text, paths on the worker) and goes to the worker
log; the tenant gets the fixed message of the code. A code outside `ErrorCode` becomes
``engine_error``. Job-level failures (`finalize_failed`) follow the same rule.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Final

from contrail.client.types import ItemError, Tag

log = logging.getLogger("contrail.worker")

# One message per code a worker writes (each one of `ErrorCode`). They say what happened and what
# the tenant can change.
MESSAGES: Final[dict[str, str]] = {
    "invalid_item": (
        "this item has no wrong answer to argue for: counterfactual rationales and the 'wrong' "
        "perturbation need the item's choices or wrong_answers"
    ),
    "prompt_too_long": (
        "the prompt of this rationale plus max_new_tokens does not fit the model's context; "
        "shorten the item, or lower num_demonstrations or max_new_tokens"
    ),
    "worker_crashed": (
        "decoding this item stopped two workers (out of memory, or a crash in the engine), so it "
        "was set aside to let the rest of the job finish; resubmit the job to try it again"
    ),
    "lockstep_exhausted": (
        "the contrastive pair of this rationale could not be decoded together within the "
        "worker's memory budget; retry it, or lower max_new_tokens"
    ),
    "engine_error": "the model failed to decode this rationale; the worker log has the cause",
}

# The job's `error` when its dataset could not be assembled (the cause is in the worker log).
FINALIZE_FAILED: Final = (
    "the job's dataset could not be assembled after {n} attempts; the rationales decoded so far "
    "are kept (GET /v1/jobs/{job_id}/results) and the worker log has the cause"
)


def error_code(engine_error: str | None) -> str:
    """The code of an engine's ``"<code>: <detail>"``; unknown or missing: engine_error."""
    code = (engine_error or "").split(":", 1)[0].strip()
    return code if code in MESSAGES else "engine_error"


def message(code: str) -> str:
    return MESSAGES.get(code, MESSAGES["engine_error"])


def item_error(
    code: str, *, item_id: str | None = None, tag: Tag | None = None, field: str | None = None
) -> ItemError:
    if code not in MESSAGES:
        code = "engine_error"
    return ItemError(item_id=item_id, tag=tag, field=field, code=code, message=MESSAGES[code])


def log_engine_errors(failures: Iterable[tuple[str, str | None]]) -> None:
    """One log line per code for (item id, engine error) pairs, with the first detail."""
    by_code: Counter[str] = Counter()
    first: dict[str, tuple[str, str]] = {}
    for item_id, detail in failures:
        code = error_code(detail)
        by_code[code] += 1
        first.setdefault(code, (item_id, detail or "no detail"))
    for code, n in by_code.items():
        item_id, detail = first[code]
        log.warning("%d rationale(s) failed with %s; first, item %r: %s", n, code, item_id, detail)
