"""When a rationale ends, decided on text (docs/METHOD.md section 2), shared by every engine.

The contrastive score suppresses tokens that both contexts like, such as the newline that ends a
rationale, so the paper stops when the *plain* argmax under C+ would stop. We decide that on the
decoded text, not on one token id: SmolLM2 writes a blank line as two "\\n" tokens although its
vocabulary has a "\\n\\n" token, so an id-based rule would never fire.

Per pair we keep only the tail of the generated text that a stop string could still straddle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class Action(Enum):
    EMIT = "emit"  # append the chosen token and go on
    EMIT_AND_FINISH = "emit_and_finish"  # append the chosen token, then the rationale is over
    STOP = "stop"  # the rationale is over before this token; emit nothing (EOS)


class _Tokenizer(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...

    def __len__(self) -> int: ...


def token_texts(tokenizer: _Tokenizer, vocab_size: int | None = None) -> list[str]:
    """The text of every token id on its own (exact for byte-level BPE on ASCII stop strings)."""
    size = vocab_size if vocab_size is not None else len(tokenizer)
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(size)]


@dataclass(frozen=True)
class StopRule:
    texts: Sequence[str]
    eos_ids: frozenset[int]
    stop: tuple[str, ...]

    @classmethod
    def build(cls, texts: Sequence[str], eos_ids: Iterable[int], stop: Sequence[str]) -> StopRule:
        return cls(texts=texts, eos_ids=frozenset(eos_ids), stop=tuple(stop))

    @property
    def tail_len(self) -> int:
        return max((len(s) for s in self.stop), default=1) - 1

    def _text(self, token: int) -> str:
        return self.texts[token] if 0 <= token < len(self.texts) else ""

    def _completes_stop(self, tail: str, token: int) -> bool:
        joined = tail + self._text(token)
        return any(s in joined for s in self.stop)

    def text_of(self, token_ids: Iterable[int]) -> str:
        return "".join(self._text(t) for t in token_ids)

    def tail_of(self, recent_ids: Sequence[int]) -> str:
        """The kept tail, derived from the most recent token ids (where no state is kept)."""
        return self.text_of(recent_ids)[-self.tail_len :] if self.tail_len else ""

    def ended(self, recent_ids: Sequence[int]) -> bool:
        """True when the last token completed a stop string (so the rationale is over)."""
        joined = self.text_of(recent_ids)
        return any(s in joined for s in self.stop)

    def decide(self, tail: str, chosen: int, plain: int) -> tuple[Action, str]:
        """Decide one step of one pair from its kept text tail; returns the new tail."""
        if plain in self.eos_ids or chosen in self.eos_ids:
            return Action.STOP, tail
        if self._completes_stop(tail, plain) and chosen != plain:
            return Action.STOP, tail
        new_tail = (tail + self._text(chosen))[-self.tail_len :] if self.tail_len else ""
        if self._completes_stop(tail, chosen):
            return Action.EMIT_AND_FINISH, new_tail
        return Action.EMIT, new_tail


def finalize_text(text: str, stop: Sequence[str]) -> str:
    """The rationale text: cut at the first stop string, surrounding white space removed."""
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()
