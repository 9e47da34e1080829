"""The engine interface: what every decoding engine takes and returns.

Prompts arrive as text; the engine owns the tokenizer, so C+ and C- are tokenized the same way
everywhere (and a prompt that is too long is a per-request error, not an exception).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from contrail.client.types import DEFAULT_STOP, FinishReason


@dataclass(frozen=True)
class ContrastSettings:
    """Token-selection settings of one request (docs/METHOD.md section 2)."""

    lam: float = 0.5
    alpha: float = 0.0
    temperature: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = DEFAULT_STOP


@dataclass(frozen=True)
class DecodeRequest:
    """One rationale to decode. `neg_prompt` None means plain greedy decoding of `pos_prompt`."""

    request_id: str
    pos_prompt: str
    neg_prompt: str | None
    settings: ContrastSettings = field(default_factory=ContrastSettings)

    @property
    def contrastive(self) -> bool:
        return self.neg_prompt is not None


@dataclass
class DecodeResult:
    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int = 0  # C+ and C- together
    completion_tokens: int = 0
    continuations: int = 0  # times the pair was re-continued from its agreed prefix
    extra_tokens: int = 0  # tokens decoded and thrown away because a pair lost lockstep
    error: str | None = None


@dataclass
class EngineStats:
    """Counters an engine accumulates over its life (exported as metrics by workers)."""

    requests: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    pairs_continued: int = 0
    extra_tokens: int = 0
    lockstep_failures: int = 0
    waves: int = 0


def prompt_char_bound(token_strings: Iterable[str], max_model_len: int) -> int | None:
    """The prompt length in characters past which a prompt surely has more than max_model_len
    tokens: every token covers at most as many characters as its longest vocabulary entry (a
    byte-level entry has one character per byte; byte-fallback entries like "<0x41>" only make
    the bound looser). None when there is no context limit to derive it from.

    Prompts over it are refused before they are built in full or tokenized, so an item, its
    demonstrations and its two prompts cannot cost a worker more than about this much memory.
    """
    if max_model_len <= 0:
        return None
    longest = max((len(t) for t in token_strings), default=0)
    return max_model_len * max(longest, 1)


class Engine(ABC):
    """Decodes batches of requests. Implementations: VllmPairEngine, ReferenceEngine."""

    model_name: str
    max_model_len: int
    stats: EngineStats
    # Characters of a prompt past which it cannot fit max_model_len (prompt_char_bound); None
    # means no bound. Planning refuses longer prompts as prompt_too_long.
    max_prompt_chars: int | None = None

    @abstractmethod
    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """Decode all requests; results come back in request order, one per request.

        Per-request problems (prompt too long, lockstep retries exhausted) are results with
        finish_reason ERROR, never exceptions, so one bad item never fails its batch.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources."""
