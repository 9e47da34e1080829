"""Wire and record schemas shared by the client, the service and the workers.

This module imports nothing heavier than pydantic, so the SDK, the API and the workers agree on
one definition of every record without pulling torch or vLLM into the client.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = "1"

# Stop strings of the few-shot format: a blank line ends a demonstration, "\nQ:" starts the next.
DEFAULT_STOP: tuple[str, ...] = ("\n\n", "\nQ:")

# Size limits of every string a user sends (docs/API.md lists them): a request is bounded by its
# fields, not only by its byte count.
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 32_768  # a question or a rationale
MAX_ANSWER_CHARS = 2_048  # an answer or one choice
MAX_CHOICES = 64
MAX_INLINE_ITEMS = 1_000  # items in a create request; larger inputs go through /v1/files
MAX_TEMPLATE_CHARS = 4_096
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_MODEL_CHARS = 160
# A model id: a local name ("smollm2-135m", "tiny") or a Hugging Face Hub id ("org/name"), with an
# optional revision after "@" (a branch, tag or commit: "org/name@main"). No ":", "*", "?", "[",
# spaces or other characters that would need quoting in Redis key patterns or metric labels.
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?(@[A-Za-z0-9._/-]+)?$"

Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
AnswerText = Annotated[str, Field(min_length=1, max_length=MAX_ANSWER_CHARS)]


class TaskName(StrEnum):
    """Task families of docs/METHOD.md section 1, plus a user-defined generic task."""

    CSQA = "csqa"
    STRATEGYQA = "strategyqa"
    CREAK = "creak"
    QASC = "qasc"
    GENERIC = "generic"


class DecodingMode(StrEnum):
    GREEDY = "greedy"
    CONTRASTIVE = "contrastive"


class Perturbation(StrEnum):
    """How the contrast context C- perturbs the answer slot."""

    WRONG = "wrong"
    EMPTY = "empty"


class Tag(StrEnum):
    FACTUAL = "factual"
    COUNTERFACTUAL = "counterfactual"


class FinishReason(StrEnum):
    STOP = "stop"  # EOS, a stop string, or the paper's rule (plain C+ argmax would stop)
    LENGTH = "length"  # max_new_tokens reached
    ERROR = "error"  # per-item failure; see the error message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Demonstration(_Strict):
    """One few-shot example with its human-written rationale."""

    question: Text
    answer: AnswerText
    choices: list[Annotated[str, Field(max_length=MAX_ANSWER_CHARS)]] | None = Field(
        default=None, max_length=MAX_CHOICES
    )
    rationale: Text


class Item(_Strict):
    """One (question, answer) pair to rationalise, in the task-independent form.

    Every task loader turns its native format into Items; the generic JSONL format *is* this model.
    """

    id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, description="Caller's id, unique in a job."
    )
    question: Text
    answer: AnswerText = Field(description="The gold answer to write a rationale for.")
    choices: list[Annotated[str, Field(max_length=MAX_ANSWER_CHARS)]] | None = Field(
        default=None,
        max_length=MAX_CHOICES,
        description="Answer options; the answer must be one of them.",
    )
    wrong_answers: list[Annotated[str, Field(max_length=MAX_ANSWER_CHARS)]] | None = Field(
        default=None,
        max_length=MAX_CHOICES,
        description="Wrong answers for free-form items (no choices), used by the 'wrong' "
        "perturbation and counterfactuals.",
    )
    rationale: str | None = Field(
        default=None,
        max_length=MAX_TEXT_CHARS,
        description="A human rationale, if known (used only as demonstration).",
    )

    @field_validator("choices")
    @classmethod
    def _choices_distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("choices needs at least 2 options")
        if any(not c.strip() for c in v):
            raise ValueError("choices must not contain empty options")
        if len(set(v)) != len(v):
            raise ValueError("choices must be distinct")
        return v

    @model_validator(mode="after")
    def _answer_in_choices(self) -> Item:
        if self.choices is not None and self.answer not in self.choices:
            raise ValueError(f"answer {self.answer!r} is not among the choices {self.choices!r}")
        return self


class DecodingSettings(_Strict):
    """How rationales are decoded.

    Defaults follow docs/METHOD.md: lambda 0.5, alpha 0, 128 tokens."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mode: DecodingMode = DecodingMode.CONTRASTIVE
    perturbation: Perturbation = Perturbation.WRONG
    lam: Annotated[float, Field(ge=0.0, lt=1.0, alias="lambda")] = 0.5
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    max_new_tokens: Annotated[int, Field(ge=1, le=2048)] = 128
    stop: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=lambda: list(DEFAULT_STOP), max_length=8
    )
    counterfactual_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    num_demonstrations: Annotated[int, Field(ge=0, le=16)] = 6
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] = 0


class RecordDecoding(_Strict):
    """The decoding settings that produced one record."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mode: DecodingMode
    perturbation: Perturbation | None
    contrast_answer: str | None = Field(
        description="The answer slot of C- ('' for the empty perturbation; null for greedy)."
    )
    lam: float | None = Field(default=None, alias="lambda")
    alpha: float | None = None
    temperature: float
    max_new_tokens: int
    seed: int


class RationaleRecord(_Strict):
    """One output record: one rationale for one (question, answer) pair."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    item_id: str
    task: TaskName
    question: str
    choices: list[str] | None
    gold_answer: str
    answer: str = Field(description="The answer this rationale was written for.")
    tag: Tag
    rationale: str
    decoding: RecordDecoding
    model: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    continuations: int = Field(
        default=0, description="How often the pair was re-continued after losing lockstep."
    )
    error: str | None = None


class ItemError(_Strict):
    """Why one input line or item (or one of its rationales) could not be rationalised."""

    item_id: str | None = None
    tag: Tag | None = Field(
        default=None,
        description="The rationale that failed (factual or counterfactual); null for an input "
        "line that never became an item.",
    )
    line: int | None = Field(default=None, description="1-based input line, when known.")
    field: str | None = None
    code: str
    message: str


ErrorCode = Literal[
    "invalid_json",
    "invalid_item",
    "unknown_task",
    "unsupported_format",  # input format unknown, or unable to feed the job's task
    "answer_not_in_choices",
    "duplicate_id",
    "prompt_too_long",
    "worker_crashed",  # the item was in flight when two workers died: set aside (poison item)
    "lockstep_exhausted",
    "empty_input",
    "not_utf8",
    "line_too_long",  # a line (or a JSON-array record) over the upload's line limit
    "too_deep",  # JSON nested deeper than the parser's limit
    "number_too_large",  # a JSON number with too many digits, or out of float range
    "engine_error",
]


# ---------------------------------------------------------------------------------------------
# HTTP API resources (OpenAI/Anthropic batch conventions where they fit).
# ---------------------------------------------------------------------------------------------


class JobStatus(StrEnum):
    """A job's state (docs/OPERATIONS.md draws the state machine).

    `validating` is never stored: input is validated at upload and a job is created, with its
    shards queued, in one atomic step straight into `in_progress`. The value stays for clients
    written against the OpenAI batch vocabulary.
    """

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED}
)

# "24h", "90m", "3600s", "7d": how long a job may take before it ends `expired`.
COMPLETION_WINDOW_PATTERN = r"^[1-9][0-9]{0,6}[smhd]$"
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_COMPLETION_WINDOW_S = 30 * 86400


def completion_window_seconds(window: str) -> int:
    """Seconds of a completion window such as "24h" (validated by COMPLETION_WINDOW_PATTERN)."""
    return int(window[:-1]) * _WINDOW_UNITS[window[-1]]


Container = Literal["jsonl", "json", "parquet"]
Compression = Literal["gzip"]


class FileObject(BaseModel):
    """An uploaded, validated input file: JSON lines, a JSON array or Parquet, optionally
    gzip-compressed, holding records of any supported task format."""

    id: str
    object: Literal["file"] = "file"
    filename: str | None = None
    bytes: int = Field(description="Bytes received (compressed size for a compressed upload).")
    lines: int = Field(description="Number of items (records) in the file.")
    task: TaskName
    format: str = Field(description="Detected record format, e.g. 'generic', 'strategyqa'.")
    container: Container = Field(
        default="jsonl",
        description="How the records were stored: JSON lines, one JSON array, or Parquet.",
    )
    compression: Compression | None = None
    created_at: int


class QualitySettings(_Strict):
    """Rationale-quality measurements a job asks for at finalization (docs/QUALITY.md)."""

    las: bool = Field(
        default=False,
        description="Compute LAS (leakage-adjusted simulatability) with the trained simulator "
        "when the job is finalized, into manifest.quality.las. It runs a language model over "
        "every record (three prompts each), so finalization takes longer.",
    )


class JobCreate(_Strict):
    """Create a rationale-generation job from an uploaded file or inline items (exactly one)."""

    input_file_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    items: list[Item] | None = Field(
        default=None,
        max_length=MAX_INLINE_ITEMS,
        description=f"At most {MAX_INLINE_ITEMS} items; upload larger inputs as a file.",
    )
    task: TaskName = TaskName.GENERIC
    model: str = Field(
        min_length=1,
        max_length=MAX_MODEL_CHARS,
        pattern=MODEL_ID_PATTERN,
        description="A served or declared model: a local name ('smollm2-135m') or a Hugging "
        "Face Hub id ('org/name', optionally '@revision').",
    )
    decoding: DecodingSettings = Field(default_factory=DecodingSettings)
    demonstrations: list[Demonstration] | None = Field(default=None, max_length=16)
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEMPLATE_CHARS,
        description="Prompt block template with {question}, {choices} and {answer} (exactly "
        "once), e.g. 'Claim: {question}\\nVerdict: {answer}.'; validated at submission. "
        "Default: the task's built-in format.",
    )
    metadata: (
        dict[
            Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS)],
            Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)],
        ]
        | None
    ) = Field(default=None, max_length=16)
    quality: QualitySettings | None = None
    completion_window: str = Field(
        default="24h",
        pattern=COMPLETION_WINDOW_PATTERN,
        description="Time the job may take, e.g. '24h', '90m', '7d' (at most 30 days). After it "
        "the job ends `expired`, with the rationales finished by then in its dataset.",
    )

    @field_validator("completion_window")
    @classmethod
    def _window_bounded(cls, v: str) -> str:
        if completion_window_seconds(v) > MAX_COMPLETION_WINDOW_S:
            raise ValueError("completion_window is at most 30 days")
        return v

    @model_validator(mode="after")
    def _one_input(self) -> JobCreate:
        if (self.input_file_id is None) == (self.items is None):
            raise ValueError("give exactly one of input_file_id or items")
        if self.items is not None and not self.items:
            raise ValueError("items must not be empty")
        return self


class RequestCounts(BaseModel):
    total: int = Field(description="Rationales to produce (factual + counterfactual).")
    completed: int = 0
    failed: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Job(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    task: TaskName
    model: str
    decoding: DecodingSettings
    template: str | None = Field(default=None, description="The job's prompt template, if any.")
    input_file_id: str | None = None
    request_counts: RequestCounts
    usage: Usage = Field(default_factory=Usage)
    metadata: dict[str, str] | None = None
    quality: QualitySettings | None = None
    error: str | None = Field(default=None, description="Why the job failed, if it did.")
    completion_window: str = "24h"
    created_at: int
    expires_at: int | None = Field(
        default=None, description="When an unfinished job ends `expired` (completion window)."
    )
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None


class Deleted(BaseModel):
    """The answer of a DELETE: the object and its stored data are gone."""

    id: str
    object: Literal["job.deleted", "file.deleted"]
    deleted: bool = True


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class DatasetLocation(BaseModel):
    """Where a job's outputs are: presigned URLs on S3, file:// URLs on local storage."""

    job_id: str
    jsonl_url: str | None
    parquet_url: str | None
    errors_url: str | None
    manifest_url: str | None
    expires_at: int | None = None


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    workers: int = Field(description="Live workers serving this model.")
    declared: bool = Field(
        default=False,
        description="Listed in the deployment's CONTRAIL_DECLARED_MODELS: jobs are accepted "
        "(and wait in the queue) while no worker is live.",
    )
    backlog: int = Field(
        default=0,
        description="Queue messages of this model not yet acknowledged (shards waiting or being "
        "decoded, and finalizations): what an autoscaler scales on.",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class ErrorDetail(BaseModel):
    line: int | None = Field(default=None, description="1-based line of a JSON-lines input.")
    record: int | None = Field(
        default=None, description="1-based record of a JSON-array or Parquet input."
    )
    field: str | None = None
    code: str | None = None
    message: str


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorBody


class Manifest(BaseModel):
    """Written next to a job's dataset: what produced it and what it holds."""

    schema_version: str = SCHEMA_VERSION
    job_id: str
    task: TaskName
    model: str
    decoding: DecodingSettings
    template: str | None = None
    request_counts: RequestCounts
    counts_by_tag: dict[str, int]
    usage: Usage
    created_at: int
    completed_at: int
    engine_seconds: float = Field(description="Sum of the workers' decoding time.")
    wall_seconds: float
    files: dict[str, str] = Field(description="Role -> object key (dataset, parquet, errors).")
    metadata: dict[str, str] | None = None
    quality: dict[str, Any] | None = Field(
        default=None,
        description="Cheap rationale-quality signals of the dataset (docs/QUALITY.md), and LAS "
        "when the job asked for it (quality.las); else run `contrail eval` for LAS.",
    )
    quality_settings: QualitySettings | None = None
