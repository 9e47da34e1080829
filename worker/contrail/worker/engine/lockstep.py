"""Lockstep bookkeeping for pair decoding, independent of vLLM so it can be unit-tested.

The pair processor writes, for every token it forces, a *code* into the chosen logit; with
`logprobs_mode="processed_logits"` and `logprobs=0` that value comes back with the token. VALID
means "chosen from both rows of a pair at the same step, with equal output lengths"; ABORT means
"forced without a valid partner row" (partner absent, or the pair already out of step). The driver
accepts a pair's output only when both members carry the same tokens, every one VALID; otherwise
it continues the pair from the longest prefix on which both agree with VALID codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

VALID_CODE = 0.0
ABORT_CODE = -7.0


def is_valid(code: float) -> bool:
    return abs(code - VALID_CODE) < 1e-3


@dataclass(frozen=True)
class MemberOutput:
    token_ids: Sequence[int]
    codes: Sequence[float]


def agreed_prefix(pos: MemberOutput, neg: MemberOutput) -> int:
    """Length of the longest prefix both members decoded in lockstep (same tokens, all VALID)."""
    n = 0
    for tp, tn, cp, cn in zip(pos.token_ids, neg.token_ids, pos.codes, neg.codes, strict=False):
        if tp != tn or not (is_valid(cp) and is_valid(cn)):
            break
        n += 1
    return n


def in_lockstep(pos: MemberOutput, neg: MemberOutput) -> bool:
    """True when the whole output of both members is one agreed sequence."""
    return (
        len(pos.token_ids) == len(neg.token_ids)
        and len(pos.codes) == len(pos.token_ids)
        and len(neg.codes) == len(neg.token_ids)
        and agreed_prefix(pos, neg) == len(pos.token_ids)
    )


@dataclass
class PairProgress:
    """What a pair's members agreed on over its waves so far, and what losing lockstep cost."""

    agreed: list[int] = field(default_factory=list)
    continuations: int = 0  # waves after which the pair was continued from its agreed prefix
    extra_tokens: int = 0  # tokens decoded in those waves beyond the agreed prefix (thrown away)

    def settle(self, pos: MemberOutput, neg: MemberOutput, max_new_tokens: int) -> list[int] | None:
        """Take one wave's outputs; return the pair's final token ids, or None to continue it.

        In lockstep, the agreed prefix plus the wave's tokens are final. Otherwise the prefix both
        members agreed on is kept, the rest counted as extra tokens, and the pair is continued,
        unless the agreed prefix already holds max_new_tokens tokens. The driver asks a wave for
        exactly the remaining tokens, so that cannot happen (a pair whose outputs agree on all of
        them is in lockstep); the check keeps a wave from ever being asked for 0 tokens.
        """
        if in_lockstep(pos, neg):
            return [*self.agreed, *pos.token_ids]
        keep = agreed_prefix(pos, neg)
        self.agreed += list(pos.token_ids[:keep])
        self.extra_tokens += len(pos.token_ids) + len(neg.token_ids) - 2 * keep
        self.continuations += 1
        if len(self.agreed) >= max_new_tokens:
            return self.agreed[:max_new_tokens]
        return None
