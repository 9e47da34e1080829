"""The pair processor on vLLM's real persistent batch: InputBatch, condense and the reorder utility.

tests/test_pair_processor.py pushes hand-made BatchUpdates. Here they come from the code a vLLM V1
model runner runs every step (GPUModelRunner._update_states): `InputBatch.remove_request` for
finished and unscheduled requests, `add_request` for new and resumed ones, `condense`, then
`reorder_batch_to_split_decodes_and_prefills` (what the runner calls when the attention backend
has a `reorder_batch_threshold`; it moves rows with `InputBatch.swap_states`, which records a SWAP
in the batch's BatchUpdateBuilder), and `refresh_metadata`, which hands the built BatchUpdate to
the processor. Each step the logits processors of the batch's SamplingMetadata run on random
logits, as the sampler runs them, and every row is checked against an oracle that knows only
request ids: a pair whose two rows are present and in step is forced to `contrastive_choice` of
its two rows' logits; a row without its partner, or a pair out of step, to EOS with the ABORT code.
The greedy token is then appended to the request's output (not for a partial prefill, whose token
vLLM throws away), and a request finishes on EOS or at its max_tokens.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from vllm import SamplingParams
from vllm.v1.attention.backends.utils import reorder_batch_to_split_decodes_and_prefills
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.sample.logits_processor import LogitsProcessors, MoveDirectionality
from vllm.v1.sample.logits_processor.interface import MovedRequest
from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch

from contrail.worker.engine.lockstep import ABORT_CODE, VALID_CODE
from contrail.worker.engine.pair_processor import ContrastivePairLogitsProcessor, PairSpec
from contrail.worker.engine.scoring import contrastive_choice

EOS = 0
VOCAB = 64
MAX_REQS = 12
MAX_MODEL_LEN = 64
BLOCK_SIZE = 16
MAX_PROMPT = 10
MAX_TOKENS = 16
LOG_TAIL = 8  # steps of the operation log shown with a failure

# Tiny tensors: on a small shared CPU, OpenMP threads cost far more than they bring.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def processor(tiny_model_path: Path) -> ContrastivePairLogitsProcessor:
    """A fresh processor per test (its abort bookkeeping must start empty)."""
    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tiny_model_path)))
    return ContrastivePairLogitsProcessor(config, torch.device("cpu"), False)


def _members(key: str) -> tuple[str, str]:
    """The request ids of a pair's C+ and C- members."""
    return f"{key}+", f"{key}-"


@dataclass
class _Request:
    state: CachedRequestState  # the runner's cached state; output_token_ids is the live list
    spec: PairSpec | None  # None: a plain request the processor must leave alone
    max_tokens: int
    in_batch: bool = False
    moved_by_reorder: bool = False  # the reorder utility has moved its row at least once
    resumed: bool = False  # left the batch (unscheduled or preempted) and came back


class _Runner:
    """A vLLM V1 model runner reduced to its persistent-batch bookkeeping, plus a lockstep oracle.

    Per step, in GPUModelRunner._update_states order: finished and unscheduled requests leave the
    InputBatch, the scheduled rows get their computed-token counts, new and resumed requests are
    added, the batch is condensed and reordered by the real reorder utility, and refresh_metadata
    passes the BatchUpdate to the processor. Then the sampler's processor loop runs, rows are
    checked, and the greedy tokens are booked as _bookkeeping_sync books them.
    """

    def __init__(
        self,
        processor: ContrastivePairLogitsProcessor,
        seed: int,
        decode_threshold: int = 1,
        eos_bias: float = 0.0,
    ) -> None:
        self.processor = processor
        self.batch = InputBatch(
            max_num_reqs=MAX_REQS,
            max_model_len=MAX_MODEL_LEN,
            max_num_batched_tokens=MAX_REQS * MAX_MODEL_LEN,
            device=torch.device("cpu"),
            vocab_size=VOCAB,
            block_sizes=[BLOCK_SIZE],
            max_num_blocks_per_req=[MAX_MODEL_LEN // BLOCK_SIZE],
            logitsprocs=LogitsProcessors([processor]),
        )
        self.rng = random.Random(seed)
        self.logits_rng = torch.Generator().manual_seed(seed)
        self.decode_threshold = decode_threshold
        self.eos_bias = eos_bias  # added to the EOS logit of every row: how often pairs end
        self.requests: dict[str, _Request] = {}
        self.finished: set[str] = set()  # sampled EOS or reached max_tokens: leave next step
        self.aborted: set[str] = set()  # oracle: pairs out of step, until both members left
        self.stats: Counter[str] = Counter()
        self.log: list[str] = []
        self.last_moves: list[MovedRequest] = []
        self._pairs = 0
        self._plain = 0

    # --- requests -------------------------------------------------------------------------------

    def _request(
        self, req_id: str, params: SamplingParams, spec: PairSpec | None, prompt_len: int | None
    ) -> None:
        length = prompt_len if prompt_len is not None else self.rng.randint(1, MAX_PROMPT)
        prompt = [self.rng.randrange(1, VOCAB) for _ in range(length)]
        state = CachedRequestState(
            req_id=req_id,
            prompt_token_ids=prompt,
            mm_features=[],
            sampling_params=params,
            generator=None,
            block_ids=([],),
            num_computed_tokens=0,
            output_token_ids=[],
        )
        assert params.max_tokens is not None
        self.requests[req_id] = _Request(state=state, spec=spec, max_tokens=params.max_tokens)

    def new_pair(
        self,
        lam: float = 0.5,
        alpha: float = 0.0,
        temperature: float = 1.0,
        max_tokens: int = 8,
        prompt_lens: tuple[int, int] | None = None,
    ) -> str:
        """Two waiting requests, C+ and C-, under a new pair key; returns the key."""
        key = f"p{self._pairs}"
        self._pairs += 1
        for role, req_id in enumerate(_members(key)):
            spec = PairSpec(
                key=key,
                role=role,
                lam=lam,
                alpha=alpha,
                temperature=temperature,
                eos=EOS,
                stop=(),
                prefix_tail=(),
            )
            params = SamplingParams(
                temperature=0.0, max_tokens=max_tokens, extra_args=spec.to_extra()
            )
            ContrastivePairLogitsProcessor.validate_params(params)
            self._request(req_id, params, spec, None if prompt_lens is None else prompt_lens[role])
        return key

    def new_plain(self, max_tokens: int = 8) -> str:
        req_id = f"plain{self._plain}"
        self._plain += 1
        self._request(req_id, SamplingParams(temperature=0.0, max_tokens=max_tokens), None, None)
        return req_id

    def running(self) -> list[str]:
        """Requests in the persistent batch that have not finished."""
        return [r for r in self.batch.req_ids if r not in self.finished]

    def waiting(self) -> list[str]:
        return [r for r, req in self.requests.items() if not req.in_batch]

    # --- one engine step ------------------------------------------------------------------------

    def step(
        self,
        admit: Iterable[str] = (),
        evict: Iterable[str] = (),
        preempt: Iterable[str] = (),
        chunks: Mapping[str, int] | None = None,
    ) -> None:
        """One step: `evict` leave the batch unscheduled (`preempt`ed ones lose their computed
        tokens), `admit` join it; a prefill is scheduled in full unless `chunks` says otherwise."""
        batch = self.batch
        admit, evict, preempt = list(admit), list(evict), set(preempt)
        done = sorted(self.finished)
        for req_id in done:  # scheduler_output.finished_req_ids
            assert batch.remove_request(req_id) is not None
            del self.requests[req_id]
        self.finished.clear()
        for req_id in evict:  # unscheduled: out of the persistent batch, cached state kept
            assert batch.remove_request(req_id) is not None
            req = self.requests[req_id]
            req.in_batch = False
            req.resumed = True  # from its next admission on
            if req_id in preempt:
                req.state.num_computed_tokens = 0  # a preempted request recomputes everything
        # The processor forgets an out-of-step pair once no member of it is left in the batch.
        for key in list(self.aborted):
            if not any(m in batch.req_id_to_index for m in _members(key)):
                self.aborted.discard(key)

        scheduled: dict[str, int] = {}
        for req_id in [*batch.req_id_to_index, *admit]:
            state = self.requests[req_id].state
            remaining = state.num_tokens - state.num_computed_tokens
            assert remaining >= 1, req_id
            n = remaining if chunks is None else chunks.get(req_id, remaining)
            assert 1 <= n <= remaining, (req_id, n, remaining)
            scheduled[req_id] = n
        for req_id, index in batch.req_id_to_index.items():
            batch.num_computed_tokens_cpu[index] = self.requests[req_id].state.num_computed_tokens
        for req_id in admit:
            req = self.requests[req_id]
            assert not req.in_batch, req_id
            batch.add_request(req.state)
            req.in_batch = True
        assert batch.num_reqs <= MAX_REQS

        batch.condense()
        before = list(batch.req_ids)
        scheduler_output = SchedulerOutput.make_empty()
        scheduler_output.num_scheduled_tokens = scheduled
        scheduler_output.total_num_scheduled_tokens = sum(scheduled.values())
        reorder_batch_to_split_decodes_and_prefills(
            batch, scheduler_output, decode_threshold=self.decode_threshold
        )
        for req_id, old in zip(batch.req_ids, before, strict=True):
            if req_id != old:
                self.requests[req_id].moved_by_reorder = True
        self.last_moves = list(batch.batch_update_builder.moved)
        for _, _, direction in self.last_moves:
            self.stats["swap" if direction == MoveDirectionality.SWAP else "condense_move"] += 1
        self.log.append(
            f"step {len(self.log)}: finished={done} evict={evict} preempt={sorted(preempt)} "
            f"admit={admit} scheduled={scheduled} moves={self.last_moves} rows={batch.req_ids}"
        )
        batch.refresh_metadata()  # -> processor.update_state(BatchUpdate | None)

        # The sampler: the logits processors that can change a greedy choice, on fp32 logits.
        logits = torch.randn(batch.num_reqs, VOCAB, generator=self.logits_rng)
        logits[:, EOS] += self.eos_bias
        original = logits.clone()
        processors = list(batch.sampling_metadata.logitsprocs.non_argmax_invariant)
        assert processors == [self.processor]
        for proc in processors:
            logits = proc.apply(logits)
        self._check(original, logits)

        # Greedy sampling, then the runner's bookkeeping of the sampled tokens.
        sampled = logits.argmax(dim=-1).tolist()
        for index, req_id in enumerate(batch.req_ids):
            req = self.requests[req_id]
            state = req.state
            state.num_computed_tokens += scheduled[req_id]
            if state.num_computed_tokens < state.num_tokens:
                continue  # partial prefill: vLLM discards the token sampled for this row
            token = int(sampled[index])
            end = int(batch.num_tokens_no_spec[index])
            batch.token_ids_cpu[index, end] = token
            batch.num_tokens_no_spec[index] = end + 1
            state.output_token_ids.append(token)
            if token == EOS or len(state.output_token_ids) >= req.max_tokens:
                self.finished.add(req_id)

    def random_step(self) -> None:
        """A random scheduler decision: arrivals, evictions, admissions by pair, chunked prefill."""
        rng = self.rng
        if rng.random() < 0.5 and len(self.requests) < 3 * MAX_REQS:
            self.new_pair(
                lam=rng.choice([0.0, 0.5, 1.0]),
                alpha=rng.choice([0.0, 0.1]),
                temperature=rng.choice([1.0, 0.7]),
                max_tokens=rng.randint(2, MAX_TOKENS),
            )
        if rng.random() < 0.15:
            self.new_plain(max_tokens=rng.randint(1, MAX_TOKENS))
        waiting = self.waiting()
        running = self.running()
        # Single rows leave (their partner is then aborted), and sometimes a whole pair at once,
        # which may come back in step.
        evict = [r for r in running if rng.random() < 0.02]
        for key in sorted({s.key for r in running if (s := self.requests[r].spec) is not None}):
            members = [m for m in _members(key) if m in running and m not in evict]
            if len(members) == 2 and rng.random() < 0.04:
                evict += members
        preempt = [r for r in evict if rng.random() < 0.5]
        room = MAX_REQS - (len(running) - len(evict))
        groups: dict[str, list[str]] = {}
        for req_id in waiting:
            spec = self.requests[req_id].spec
            groups.setdefault(spec.key if spec is not None else req_id, []).append(req_id)
        admit: list[str] = []
        for group in rng.sample(list(groups.values()), len(groups)):
            draw = rng.random()
            chosen = group if draw < 0.6 else [rng.choice(group)] if draw < 0.7 else []
            if len(chosen) <= room:
                admit += chosen
                room -= len(chosen)
        chunks: dict[str, int] = {}
        for req_id in [r for r in running if r not in evict] + admit:
            state = self.requests[req_id].state
            remaining = state.num_tokens - state.num_computed_tokens
            if remaining > 1 and rng.random() < 0.4:
                chunks[req_id] = rng.randint(1, remaining - 1)
        self.step(admit=admit, evict=evict, preempt=preempt, chunks=chunks)

    # --- the oracle -----------------------------------------------------------------------------

    def _fail(self, message: str) -> str:
        return message + "\n" + "\n".join(self.log[-LOG_TAIL:])

    def _forced(self, result: torch.Tensor, row: int) -> tuple[int, float]:
        """The one token a row was forced to, and its code; fails if the row was not forced."""
        finite = torch.isfinite(result[row]).nonzero().flatten().tolist()
        assert len(finite) == 1, self._fail(
            f"row {row} ({self.batch.req_ids[row]}) not forced to a single token: "
            f"{len(finite)} finite entries"
        )
        return int(finite[0]), float(result[row, finite[0]])

    def _check(self, original: torch.Tensor, result: torch.Tensor) -> None:
        rows = {req_id: index for index, req_id in enumerate(self.batch.req_ids)}
        keys: set[str] = set()
        for req_id, index in rows.items():
            spec = self.requests[req_id].spec
            if spec is None:
                assert torch.equal(result[index], original[index]), self._fail(
                    f"plain request {req_id} (row {index}) was changed"
                )
            else:
                keys.add(spec.key)
        for key in sorted(keys):
            pos_id, neg_id = _members(key)
            pos, neg = rows.get(pos_id), rows.get(neg_id)
            if pos is None or neg is None:
                lone = pos if pos is not None else neg
                assert lone is not None
                got = self._forced(result, lone)
                assert got == (EOS, ABORT_CODE), self._fail(
                    f"{key}: lone row {lone} forced to {got}, expected EOS/ABORT"
                )
                self.stats["lone"] += 1
                continue
            req_p, req_n = self.requests[pos_id], self.requests[neg_id]
            got_p, got_n = self._forced(result, pos), self._forced(result, neg)
            out_of_step = len(req_p.state.output_token_ids) != len(req_n.state.output_token_ids)
            if key in self.aborted or out_of_step:
                self.aborted.add(key)
                assert got_p == got_n == (EOS, ABORT_CODE), self._fail(
                    f"{key}: out-of-step pair at rows {pos}/{neg} forced to {got_p}/{got_n}"
                )
                self.stats["out_of_step"] += 1
                continue
            spec = req_p.spec
            assert spec is not None
            chosen, plain = contrastive_choice(
                original[pos : pos + 1],
                original[neg : neg + 1],
                torch.tensor([spec.lam]),
                torch.tensor([spec.alpha]),
                torch.tensor([spec.temperature]),
            )
            token = int(chosen[0])
            if EOS in (token, int(plain[0])):  # StopRule.decide without stop strings: STOP
                token = EOS
            assert got_p == got_n == (token, VALID_CODE), self._fail(
                f"{key}: rows {pos} (C+) / {neg} (C-) forced to {got_p}/{got_n}, "
                f"expected ({token}, VALID) for both"
            )
            self.stats["valid"] += 1
            if req_p.moved_by_reorder or req_n.moved_by_reorder:
                self.stats["valid_after_reorder"] += 1
            if req_p.resumed or req_n.resumed:
                self.stats["valid_after_resume"] += 1


def test_swap_by_the_reorder_utility_splits_pairs_across_rows(
    processor: ContrastivePairLogitsProcessor,
) -> None:
    """Two freed rows refilled with a new pair in prefill: the reorder swaps one of them past a
    decoding row, which moves the C- of a decoding pair in front of its C+."""
    runner = _Runner(processor, seed=1, eos_bias=-30.0)
    a = runner.new_pair(max_tokens=1)  # both finish after their first token
    b = runner.new_pair(max_tokens=8)
    a_pos, a_neg = _members(a)
    b_pos, b_neg = _members(b)
    runner.step(admit=[a_pos, b_pos, a_neg, b_neg])
    assert runner.batch.req_ids == [a_pos, b_pos, a_neg, b_neg]
    assert runner.stats["valid"] == 2
    assert runner.finished == {a_pos, a_neg}

    c = runner.new_pair(max_tokens=8)
    c_pos, c_neg = _members(c)
    runner.step(admit=[c_pos, c_neg])  # C fills rows 0 and 2: [C+, B+, C-, B-] before reorder
    assert runner.last_moves == [(3, 0, MoveDirectionality.SWAP)]
    assert runner.batch.req_ids == [b_neg, b_pos, c_neg, c_pos]
    assert runner.stats["valid"] == 4

    runner.step()  # no batch change: update_state(None), the pairing is kept
    assert runner.last_moves == []
    assert runner.stats["valid"] == 6
    assert runner.stats["lone"] == runner.stats["out_of_step"] == 0


def test_chunked_prefill_member_reordered_behind_its_partner(
    processor: ContrastivePairLogitsProcessor,
) -> None:
    """C+ prefills in two chunks, C- in one: C- decodes first, C+ is a short extend and is
    swapped behind decoding rows; the pair is then out of step and must be aborted."""
    runner = _Runner(processor, seed=2, eos_bias=-30.0)
    keep = runner.new_pair(max_tokens=8)
    pair = runner.new_pair(max_tokens=8, prompt_lens=(4, 2))
    keep_pos, keep_neg = _members(keep)
    pos, neg = _members(pair)
    runner.step(admit=[pos, keep_pos, neg, keep_neg], chunks={pos: 3})
    assert [len(runner.requests[r].state.output_token_ids) for r in (pos, neg)] == [0, 1]
    runner.step(chunks={pos: 1})  # C+ has context, 1 token, still prefilling: a short extend
    assert runner.last_moves == [(3, 0, MoveDirectionality.SWAP)]
    assert runner.batch.req_ids == [keep_neg, keep_pos, neg, pos]
    assert runner.stats["out_of_step"] == 1
    assert runner.finished == {pos, neg}  # both forced to EOS
    assert runner.stats["valid"] == 2 + 1  # step 1: both pairs; step 2: the kept pair


@pytest.mark.parametrize("decode_threshold", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_steps_on_the_real_input_batch(
    processor: ContrastivePairLogitsProcessor, seed: int, decode_threshold: int
) -> None:
    runner = _Runner(processor, seed=seed, decode_threshold=decode_threshold, eos_bias=-2.0)
    for _ in range(250):
        runner.random_step()
    stats = runner.stats
    # The walk must have exercised what this test is for.
    assert stats["swap"] >= 20, stats
    assert stats["condense_move"] >= 5, stats
    assert stats["valid"] >= 100, stats
    assert stats["valid_after_reorder"] >= 20, stats
    assert stats["valid_after_resume"] >= 5, stats
    assert stats["lone"] >= 1 and stats["out_of_step"] >= 1, stats
