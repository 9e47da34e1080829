"""The pair processor on a fake persistent batch: add, remove, move and swap steps, rows checked.

Like vLLM's own logits-processor tests, a fake batch is pushed through BatchUpdates and each row of
the result is checked against what the lockstep protocol demands.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("vllm")

from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from contrail.worker.engine.lockstep import (
    ABORT_CODE,
    VALID_CODE,
    MemberOutput,
    PairProgress,
    agreed_prefix,
    in_lockstep,
)
from contrail.worker.engine.pair_processor import (
    ContrastivePairLogitsProcessor,
    PairSpec,
)
from contrail.worker.engine.scoring import contrastive_choice

EOS = 0


@pytest.fixture(scope="module")
def processor(tiny_model_path: Path) -> ContrastivePairLogitsProcessor:
    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tiny_model_path)))
    return ContrastivePairLogitsProcessor(config, torch.device("cpu"), False)


def _params(key: str, role: int, lam: float = 0.5) -> SamplingParams:
    spec = PairSpec(
        key=key,
        role=role,
        lam=lam,
        alpha=0.0,
        temperature=1.0,
        eos=EOS,
        stop=("\n\n",),
        prefix_tail=(),
    )
    return SamplingParams(temperature=0.0, max_tokens=8, extra_args=spec.to_extra())


def _update(size: int, removed=(), added=(), moved=()) -> BatchUpdate:
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


def _forced(row: torch.Tensor) -> tuple[int, float]:
    """The one token a row was forced to, and its code; fails if the row was not forced."""
    finite = torch.isfinite(row).nonzero().flatten().tolist()
    assert len(finite) == 1, f"row not forced to a single token: {len(finite)} finite entries"
    return finite[0], float(row[finite[0]])


def test_pair_rows_forced_to_the_contrastive_choice(
    processor: ContrastivePairLogitsProcessor,
) -> None:
    out_a: list[int] = []
    out_b: list[int] = []
    processor.update_state(
        _update(
            3, added=[(0, _params("p1", 0), [5, 6], out_a), (1, _params("p1", 1), [5, 7], out_b)]
        )
    )
    torch.manual_seed(0)
    logits = torch.randn(3, 64)
    original = logits.clone()
    result = processor.apply(logits)
    chosen, _ = contrastive_choice(
        original[0:1], original[1:2], torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([1.0])
    )
    for row in (0, 1):
        token, code = _forced(result[row])
        assert (token, code) == (int(chosen[0]), VALID_CODE), f"row {row}"
    assert torch.equal(result[2], original[2]), "a row that is no pair's must be left alone"
    processor.update_state(_update(0, removed=[1, 0]))


def test_lone_row_and_out_of_step_pair_are_aborted(
    processor: ContrastivePairLogitsProcessor,
) -> None:
    out_a: list[int] = []
    processor.update_state(_update(1, added=[(0, _params("p2", 0), [5], out_a)]))
    token, code = _forced(processor.apply(torch.randn(1, 64))[0])
    assert (token, code) == (EOS, ABORT_CODE), "a row without its partner must be aborted"

    out_b: list[int] = []
    out_a.append(9)  # the lone row's token was appended: the pair is now out of step
    processor.update_state(_update(2, added=[(1, _params("p2", 1), [5], out_b)]))
    result = processor.apply(torch.randn(2, 64))
    assert [_forced(result[r]) for r in (0, 1)] == [(EOS, ABORT_CODE)] * 2
    out_b.append(9)  # equal lengths again do not revive an aborted pair
    result = processor.apply(torch.randn(2, 64))
    assert [_forced(result[r]) for r in (0, 1)] == [(EOS, ABORT_CODE)] * 2
    processor.update_state(_update(0, removed=[1, 0]))


def test_moves_and_swaps_keep_pairs_together(processor: ContrastivePairLogitsProcessor) -> None:
    a: list[int] = []
    b: list[int] = []
    c: list[int] = []
    d: list[int] = []
    processor.update_state(
        _update(
            4,
            added=[
                (0, _params("x", 0), [1], a),
                (1, _params("y", 0), [1], c),
                (2, _params("x", 1), [2], b),
                (3, _params("y", 1), [2], d),
            ],
        )
    )
    processor.update_state(_update(4, moved=[(0, 3, MoveDirectionality.SWAP)]))
    # now: row 3 = x/C+, row 0 = y/C-, row 1 = y/C+, row 2 = x/C-
    logits = torch.randn(4, 64)
    result = processor.apply(logits.clone())
    assert _forced(result[3]) == _forced(result[2]), "pair x split by the swap"
    assert _forced(result[1]) == _forced(result[0]), "pair y split by the swap"
    assert _forced(result[3])[1] == VALID_CODE
    processor.update_state(_update(3, removed=[3]))  # x/C+ leaves: x/C- is now alone
    result = processor.apply(torch.randn(3, 64))
    assert _forced(result[2]) == (EOS, ABORT_CODE)
    processor.update_state(_update(0, removed=[2, 1, 0]))


def test_finished_text_forces_eos_as_valid(
    processor: ContrastivePairLogitsProcessor, tiny_model_path: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_path))
    newline = tok("\n")["input_ids"][-1]
    a = [7, newline, newline]
    b = [7, newline, newline]
    processor.update_state(
        _update(2, added=[(0, _params("s", 0), [3], a), (1, _params("s", 1), [4], b)])
    )
    result = processor.apply(torch.randn(2, 64))
    assert [_forced(result[r]) for r in (0, 1)] == [(EOS, VALID_CODE)] * 2
    processor.update_state(_update(0, removed=[1, 0]))


def test_validate_params_rejects_sampling_temperature() -> None:
    bad = _params("t", 0)
    bad.temperature = 0.7
    with pytest.raises(ValueError, match="temperature=0"):
        ContrastivePairLogitsProcessor.validate_params(bad)


def test_agreed_prefix_accepts_only_valid_identical_tokens() -> None:
    v, a = VALID_CODE, ABORT_CODE
    same = MemberOutput([4, 5, 0], [v, v, v])
    assert in_lockstep(same, same)
    assert agreed_prefix(MemberOutput([4, 5, 0], [v, v, a]), MemberOutput([4, 5], [v, v])) == 2
    assert agreed_prefix(MemberOutput([4, 9], [v, v]), MemberOutput([4, 5], [v, v])) == 1
    # identical tokens, but the stop was decided without a partner: not in lockstep
    lone_stop = MemberOutput([4, 0], [v, a])
    assert not in_lockstep(MemberOutput([4, 0], [v, v]), lone_stop)
    assert agreed_prefix(MemberOutput([], []), same) == 0
    assert not math.isnan(ABORT_CODE)


def test_settle_keeps_the_agreed_prefix_and_counts_the_rest() -> None:
    v, a = VALID_CODE, ABORT_CODE
    progress = PairProgress()
    # wave 1 (8 tokens asked): 2 tokens agreed, then C- lost its partner and was aborted
    pos, neg = MemberOutput([4, 5, 6], [v, v, v]), MemberOutput([4, 5, EOS], [v, v, a])
    assert progress.settle(pos, neg, 8) is None
    assert (progress.agreed, progress.continuations, progress.extra_tokens) == ([4, 5], 1, 2)
    # wave 2 (6 tokens asked), continued from [4, 5]: in lockstep, so final
    both = MemberOutput([7, 8, EOS], [v, v, v])
    assert progress.settle(both, both, 8) == [4, 5, 7, 8, EOS]
    assert (progress.continuations, progress.extra_tokens) == (1, 2)


def test_settle_finishes_when_the_agreed_prefix_fills_the_budget() -> None:
    # The driver never asks a wave for more than the remaining tokens (see the property below);
    # were a wave to bring the agreed prefix to max_new_tokens, those tokens are final and the
    # pair's continuation and extra-token counts go with them.
    v = VALID_CODE
    progress = PairProgress(agreed=[1, 2, 3], continuations=1, extra_tokens=5)
    pos, neg = MemberOutput([4, 5, 6], [v, v, v]), MemberOutput([4, 5, 9], [v, v, v])
    assert progress.settle(pos, neg, 5) == [1, 2, 3, 4, 5]
    assert (progress.continuations, progress.extra_tokens) == (2, 7)


_member = st.lists(
    st.tuples(st.sampled_from([4, 5, EOS]), st.sampled_from([VALID_CODE, ABORT_CODE])), max_size=4
)


@settings(max_examples=300, deadline=None)
@given(before=st.integers(0, 3), remaining=st.integers(1, 4), pos=_member, neg=_member)
def test_a_wave_within_its_budget_is_final_or_leaves_tokens_to_decode(
    before: int, remaining: int, pos: list[tuple[int, float]], neg: list[tuple[int, float]]
) -> None:
    """vLLM returns at most max_tokens = remaining tokens per member, each with its code."""
    members = [
        MemberOutput([t for t, _ in m[:remaining]], [c for _, c in m[:remaining]])
        for m in (pos, neg)
    ]
    progress = PairProgress(agreed=[7] * before)
    tokens = progress.settle(members[0], members[1], before + remaining)
    if in_lockstep(members[0], members[1]):
        assert tokens == [7] * before + list(members[0].token_ids)
        assert progress.continuations == 0
    else:
        assert tokens is None and progress.continuations == 1
        assert before <= len(progress.agreed) < before + remaining
