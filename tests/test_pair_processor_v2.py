"""The V2 pair processor against Model Runner V2's processor interface, step by step.

vLLM's V2 runner cannot start on the CPU build (it needs Triton), so `_V2Runner` stands in for its
bookkeeping with the buffers the processor reads, shaped as the runner's (`RequestState`):
per-slot `all_token_ids`, `prompt_len` and `total_len`, which the runner's kernels update after
each step, wrapped in vLLM's own `LogitsProcRequestState` and `LogitsContext`. Slots are recycled
through a free list with no removal call; rows are shuffled every step (V2 lays the batch out
afresh); prompts are prefilled in random chunks; requests are preempted and resumed with their
output as part of the prefill; a pair's members may be admitted steps apart. Every row is checked
each step against the protocol, computed from request ids only: a pair in step gets
`contrastive_choice` of its two rows' logits (VALID), a row without its partner or a pair out of
step EOS (ABORT), and a pair whose two rows are both mid-prefill is left alone.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from vllm import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

from contrail.worker.engine.lockstep import ABORT_CODE, VALID_CODE
from contrail.worker.engine.pair_processor import ContrastivePairLogitsProcessor, PairSpec
from contrail.worker.engine.pair_processor_v2 import ContrastivePairLogitsProcessorV2
from contrail.worker.engine.scoring import contrastive_choice

EOS = 0
VOCAB = 64
MAX_REQS = 10
MAX_MODEL_LEN = 64
MAX_PROMPT = 12
MAX_TOKENS = 12

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _buffer(*shape: int) -> SimpleNamespace:
    """A runner buffer as the processor sees it: the device tensor under `.gpu`."""
    return SimpleNamespace(gpu=torch.zeros(shape, dtype=torch.int32))


@dataclass
class _Request:
    rid: str
    prompt: list[int]
    spec: PairSpec | None
    max_tokens: int
    output: list[int] = field(default_factory=list)
    slot: int | None = None
    computed: int = 0  # tokens of the current prefill already fed
    finished: bool = False


class _V2Runner:
    """Model Runner V2's request bookkeeping, reduced to what a logits processor reads."""

    def __init__(self, processor_factory: type, tokenizer: Path, rng: random.Random) -> None:
        self.rng = rng
        self.token_ids = _buffer(MAX_REQS, MAX_MODEL_LEN)
        self.prompt_len = _buffer(MAX_REQS)
        self.total_len = _buffer(MAX_REQS)
        state = LogitsProcRequestState(
            device=torch.device("cpu"),
            max_num_reqs=MAX_REQS,
            vocab_size=VOCAB,
            all_token_ids=self.token_ids,  # type: ignore[arg-type]
            prompt_len=self.prompt_len,  # type: ignore[arg-type]
            prefill_len=_buffer(MAX_REQS),  # type: ignore[arg-type]
            total_len=self.total_len,  # type: ignore[arg-type]
        )
        config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tokenizer)))
        self.processor = processor_factory(config, state)
        self.free = list(range(MAX_REQS))
        self.running: list[_Request] = []
        self.aborted: set[str] = set()  # the oracle's own record of pairs out of step
        self.seen: Counter[str] = Counter()

    def admit(self, req: _Request) -> None:
        """RequestState.add_request: a free slot gets the prompt plus any output so far."""
        slot = self.free.pop(self.rng.randrange(len(self.free)))
        req.slot, req.computed = slot, 0
        history = req.prompt + req.output
        self.token_ids.gpu[slot].zero_()
        self.token_ids.gpu[slot, : len(history)] = torch.tensor(history, dtype=torch.int32)
        self.prompt_len.gpu[slot] = len(req.prompt)
        self.total_len.gpu[slot] = len(history)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=req.max_tokens,
            extra_args=req.spec.to_extra() if req.spec else None,
        )
        # True for plain requests too: the processor must see every step (the watchdog's
        # step counter), and it leaves their rows alone.
        assert self.processor.add_request(slot, params) is True
        self.running.append(req)

    def release(self, req: _Request) -> None:
        """Finished or preempted: the slot goes back to the free list, no processor call."""
        self.running.remove(req)
        assert req.slot is not None
        self.free.append(req.slot)
        req.slot = None

    def step(self) -> None:
        order = self.running[:]
        self.rng.shuffle(order)
        positions: list[int] = []
        live: dict[str, bool] = {}
        for req in order:
            history = len(req.prompt) + len(req.output)
            if req.computed < history:  # prefill, in chunks of random size
                req.computed = min(history, req.computed + self.rng.randint(1, 8))
            else:
                req.computed += 1  # decode: the last token is fed
            positions.append(req.computed - 1)
            live[req.rid] = req.computed == history
        slots = np.array([r.slot for r in order], dtype=np.int32)
        logits = torch.randn(len(order), VOCAB)
        ctx = LogitsContext(
            expanded_idx_mapping=torch.from_numpy(slots).long(),
            idx_mapping=torch.from_numpy(slots).long(),
            idx_mapping_np=slots,
            expanded_local_pos=torch.zeros(len(order), dtype=torch.long),
            input_ids=torch.zeros(len(order), dtype=torch.long),
            pos=torch.tensor(positions, dtype=torch.long),
            seq_lens_upper_bound_np=np.array(positions, dtype=np.int32) + 1,
        )
        out = self.processor.apply(logits.clone(), ctx)
        self._check(order, logits, out, live)
        for row, req in enumerate(order):
            if live[req.rid]:
                self._commit(req, int(out[row].argmax()))

    def _commit(self, req: _Request, token: int) -> None:
        """The runner's post-sampling kernel: the token joins the history on the device."""
        assert req.slot is not None
        total = int(self.total_len.gpu[req.slot])
        self.token_ids.gpu[req.slot, total] = token
        self.total_len.gpu[req.slot] = total + 1
        req.output.append(token)
        req.computed = total  # the new token is fed next step
        if token == EOS or len(req.output) >= req.max_tokens:
            req.finished = True
            self.release(req)

    def _check(
        self, order: list[_Request], logits: torch.Tensor, out: torch.Tensor, live: dict[str, bool]
    ) -> None:
        rows = {r.rid: i for i, r in enumerate(order)}
        for i, req in enumerate(order):
            if req.spec is None:
                assert torch.equal(out[i], logits[i]), f"{req.rid}: a plain row was changed"
                continue
            partner_id = _partner(req.rid)
            j = rows.get(partner_id)
            if j is None:
                self._expect(out[i], EOS, ABORT_CODE, req.rid, "partner absent")
                self.seen["lone"] += 1
                continue
            partner = order[j]
            key = req.spec.key
            pos_i, neg_i = (i, j) if req.spec.role == 0 else (j, i)
            if not live[req.rid] and not live[partner_id] and key not in self.aborted:
                assert torch.equal(out[i], logits[i]), f"{req.rid}: prefill row was changed"
                self.seen["both_prefill"] += 1
                continue
            if (
                key in self.aborted
                or live[req.rid] != live[partner_id]
                or (len(req.output) != len(partner.output))
            ):
                self.aborted.add(key)
                self._expect(out[i], EOS, ABORT_CODE, req.rid, "pair out of step")
                self.seen["out_of_step"] += 1
                continue
            spec = req.spec
            chosen, plain = contrastive_choice(
                logits[pos_i : pos_i + 1],
                logits[neg_i : neg_i + 1],
                torch.tensor([spec.lam]),
                torch.tensor([spec.alpha]),
                torch.tensor([spec.temperature]),
            )
            token = EOS if EOS in (int(chosen), int(plain)) else int(chosen)
            self._expect(out[i], token, VALID_CODE, req.rid, "pair in step")
            self.seen["in_step"] += 1

    @staticmethod
    def _expect(row: torch.Tensor, token: int, code: float, rid: str, why: str) -> None:
        finite = torch.isfinite(row).nonzero().flatten().tolist()
        assert finite == [token], f"{rid} ({why}): forced to {finite}, expected [{token}]"
        assert float(row[token]) == code, f"{rid} ({why}): code {float(row[token])}"


def _partner(rid: str) -> str:
    return rid[:-1] + ("-" if rid.endswith("+") else "+")


def _spec(key: str, role: int, rng: random.Random) -> PairSpec:
    return PairSpec(
        key=key,
        role=role,
        lam=rng.choice([0.0, 0.5, 1.0]),
        alpha=rng.choice([0.0, 0.1]),
        temperature=1.0,
        eos=EOS,
        stop=(),
        prefix_tail=(),
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_steps_on_v2_slots(tiny_model_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    runner = _V2Runner(ContrastivePairLogitsProcessorV2, tiny_model_path, rng)
    waiting: list[list[_Request]] = []  # a pair's members are sent together, as the driver does
    preempted: list[_Request] = []
    for n in range(14):
        spec = _spec(f"k{n}", 0, rng)
        neg = PairSpec(**{**spec.__dict__, "role": 1})
        # Tokens from 1 (0 is EOS), so a prompt never ends a request.
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(2, MAX_PROMPT))]
        waiting.append(
            [
                _Request(f"k{n}+", prompt, spec, MAX_TOKENS),
                _Request(f"k{n}-", prompt[::-1], neg, MAX_TOKENS),
            ]
        )
    for n in range(4):  # plain requests share the batch and must be left alone
        waiting.append([_Request(f"plain{n}", [rng.randrange(1, VOCAB)] * 3, None, 6)])
    rng.shuffle(waiting)
    for _ in range(400):
        if not (waiting or preempted or runner.running):
            break
        for req in list(preempted):
            if runner.free and rng.random() < 0.3:
                preempted.remove(req)
                runner.admit(req)  # resumed: its output is part of the prefill
        while waiting and runner.free and rng.random() < 0.6:
            group = waiting[-1]
            # Mostly both members at once; sometimes only the first fits (partial admission).
            take = 1 if len(runner.free) < len(group) or rng.random() < 0.15 else len(group)
            for req in group[:take]:
                runner.admit(req)
            del group[:take]
            if not group:
                waiting.pop()
        if runner.running and rng.random() < 0.05:
            victim = rng.choice(runner.running)
            runner.release(victim)
            preempted.append(victim)
        if runner.running:
            runner.step()
    assert not waiting and not preempted and not runner.running, "the walk did not finish"
    # The walk reached every case the protocol distinguishes.
    assert {"in_step", "lone", "out_of_step", "both_prefill"} <= set(runner.seen), runner.seen
    # What the processor keeps is bounded by the slots: a recycled slot drops its last pair.
    processor = runner.processor
    assert len(processor._slots) <= MAX_REQS
    assert processor._aborted <= {s.spec.key for s in processor._slots.values()}


def test_stop_text_reads_the_agreed_prefix_but_not_the_prompt_before_it(
    tiny_model_path: Path,
) -> None:
    """The stop rule sees the pair's output and the agreed-prefix tokens at the end of its prompt
    (prefix_tail), never the template text before them: the same cases as the V1 processor."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_path))
    nl = tok("\n")["input_ids"][-1]
    rng = random.Random(0)
    for prompt, tail, output, ends in [
        ([5, nl, nl, 6], (), [7], False),  # a blank line in the template only
        ([5, 6, 7, nl], (nl,), [nl], True),  # the blank line spans agreed prefix and output
        ([5, 6], (), [7, nl, nl], True),  # the output wrote it
    ]:
        v2 = _V2Runner(ContrastivePairLogitsProcessorV2, tiny_model_path, rng)
        config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tiny_model_path)))
        v1 = ContrastivePairLogitsProcessor(config, torch.device("cpu"), False)
        spec = PairSpec("s", 0, 0.5, 0.0, 1.0, EOS, ("\n\n",), tail)
        neg = PairSpec(**{**spec.__dict__, "role": 1})
        pos_req, neg_req = (
            _Request("s+", prompt, spec, 8, list(output)),
            _Request("s-", prompt, neg, 8, list(output)),
        )
        v2.admit(pos_req)
        v2.admit(neg_req)
        for req in (pos_req, neg_req):
            req.computed = len(req.prompt) + len(req.output) - 1  # prefilled: decoding now
        logits = torch.randn(2, VOCAB)
        slots = np.array([pos_req.slot, neg_req.slot], dtype=np.int32)
        history = len(prompt) + len(output)
        ctx = LogitsContext(
            expanded_idx_mapping=torch.from_numpy(slots).long(),
            idx_mapping=torch.from_numpy(slots).long(),
            idx_mapping_np=slots,
            expanded_local_pos=torch.zeros(2, dtype=torch.long),
            input_ids=torch.zeros(2, dtype=torch.long),
            pos=torch.tensor([history - 1, history - 1]),
            seq_lens_upper_bound_np=np.array([history, history], dtype=np.int32),
        )
        out_v2 = v2.processor.apply(logits.clone(), ctx)
        from vllm.v1.sample.logits_processor import BatchUpdate

        added = [(0, _params(spec), prompt, list(output)), (1, _params(neg), prompt, list(output))]
        v1.update_state(BatchUpdate(batch_size=2, removed=[], added=added, moved=[]))  # type: ignore[arg-type]
        out_v1 = v1.apply(logits.clone())
        assert torch.equal(out_v2, out_v1), (prompt, tail, output)
        if ends:
            assert torch.isfinite(out_v2[0]).nonzero().flatten().tolist() == [EOS]
            assert float(out_v2[0, EOS]) == VALID_CODE


def _params(spec: PairSpec) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=8, extra_args=spec.to_extra())


def test_a_batch_of_plain_requests_still_ticks_the_step_counter(tiny_model_path: Path) -> None:
    """V2 calls apply() only for batches with a row some stage asked for; the processor asks for
    every row, so a greedy-only wave advances the watchdog's step counter, untouched."""
    from contrail.worker.engine.progress import STEPS

    runner = _V2Runner(ContrastivePairLogitsProcessorV2, tiny_model_path, random.Random(0))
    runner.admit(_Request("plain", [5, 6, 7], None, 4))
    before = STEPS.steps
    runner.step()  # checks that the plain row comes back unchanged
    assert STEPS.steps == before + 1
