"""The reference engine against independent oracles, plus the shared token choice and stop rule.

Oracles (tests/oracle.py): transformers' classifier-free guidance (guidance_scale = 1/(1-lam),
C- as negative prompt) for contrastive decoding, and transformers' greedy `generate` for greedy.
Prompts are built here from real StrategyQA items (tests/research_data.py), not from the product's
prompt builder, so these tests depend on nothing but the engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from contrail.client.types import DEFAULT_STOP, FinishReason
from contrail.worker.engine.base import ContrastSettings, DecodeRequest, DecodeResult
from contrail.worker.engine.reference import ReferenceEngine
from contrail.worker.engine.scoring import contrastive_choice
from contrail.worker.engine.stopping import Action, StopRule, finalize_text
from contrail.worker.models import ModelSpec
from tests.research_data import DATA as RESEARCH_DATA

from .oracle import (
    assert_equals_contrastive_loop,
    cfg_generate,
    greedy_generate,
)

DATA = RESEARCH_DATA / "strategyqa"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _load(name: str) -> list[dict[str, Any]]:
    path = DATA / name
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _yes_no(answer: bool) -> str:
    return "yes" if answer else "no"


def strategyqa_pairs(n: int, *, demos: int = 0, vary: bool = True) -> list[tuple[str, str]]:
    """(C+, C-) prompts: C+ carries the gold answer, C- the wrong one. With ``vary`` the number
    of demonstrations cycles 0..demos and some queries lead with their facts, so lengths mix."""
    dev = _load("dev.json")
    train = _load("train.json") if demos else []
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(dev[:n]):
        k = (i % (demos + 1)) if vary else demos
        shots = [
            f"Q: {d['question']}\nA: The answer is {_yes_no(d['answer'])}. {' '.join(d['facts'])}"
            for d in train[i : i + k]
        ]
        lead = " ".join(item["facts"][: i % 3]) + " " if vary and i % 3 else ""
        query = f"Q: {lead}{item['question']}\nA: The answer is"
        head = "".join(s + "\n\n" for s in shots)
        gold, wrong = _yes_no(item["answer"]), _yes_no(not item["answer"])
        pairs.append((f"{head}{query} {gold}.", f"{head}{query} {wrong}."))
    return pairs


def _check_against(result: DecodeResult, expected: list[int]) -> None:
    """Our ids are a prefix of the oracle's (the oracle has no stop rule); by LENGTH, all of it."""
    assert result.finish_reason in (FinishReason.STOP, FinishReason.LENGTH), result.error
    got = result.token_ids
    assert got == expected[: len(got)], (result.request_id, got, expected)
    if result.finish_reason is FinishReason.LENGTH:
        assert len(got) == len(expected)


# ------------------------------------------------------------------------------------------
# contrastive_choice on hand-made logits
# ------------------------------------------------------------------------------------------


def _choose(
    pos: list[float], neg: list[float], lam: float = 0.5, alpha: float = 0.0, temp: float = 1.0
) -> tuple[int, int]:
    chosen, plain = contrastive_choice(
        torch.tensor([pos]),
        torch.tensor([neg]),
        torch.tensor([lam]),
        torch.tensor([alpha]),
        torch.tensor([temp]),
    )
    return int(chosen[0]), int(plain[0])


def test_contrast_flips_the_choice() -> None:
    # C+ slightly prefers token 0, but C- (any answer) likes token 0 a lot: contrast picks 1.
    pos, neg = [2.0, 1.8, -1.0], [4.0, 0.0, 0.0]
    assert _choose(pos, neg, lam=0.0) == (0, 0)
    assert _choose(pos, neg, lam=0.5) == (1, 0)


def test_plausibility_masks_implausible_tokens() -> None:
    # token 2 is unlikely under C+ (p ~ 0.013) but far less likely under C-: it wins the raw
    # contrast, and loses it once only tokens with p >= 0.1 * max p compete.
    pos, neg = [3.0, 2.0, -2.0], [3.0, 2.0, -9.0]
    assert _choose(pos, neg, alpha=0.0) == (2, 0)
    assert _choose(pos, neg, alpha=0.1) == (0, 0)
    # alpha = 1 leaves only the C+ argmax
    assert _choose([1.0, 1.5, 0.0], [0.0, 5.0, 0.0], alpha=1.0) == (1, 1)


def test_temperature_applies_to_c_plus_only() -> None:
    pos, neg = [2.0, 0.0, -1.0], [3.0, 0.0, -3.0]
    assert _choose(pos, neg, temp=0.5) == (0, 0)
    assert _choose(pos, neg, temp=2.0) == (2, 0)  # plain stays the raw C+ argmax
    for temp in (0.25, 0.5, 2.0, 4.0):
        a = torch.log_softmax(torch.tensor(pos) / temp, -1)
        b = torch.log_softmax(torch.tensor(neg), -1)
        assert _choose(pos, neg, temp=temp)[0] == int((a - 0.5 * b).argmax())
    # scaling C- by the temperature as well would have picked another token here
    pos2, neg2 = [1.0, 0.0, 0.5], [2.0, 0.0, 1.9]
    a = torch.log_softmax(torch.tensor(pos2) / 4.0, -1)
    both = int((a - 0.5 * torch.log_softmax(torch.tensor(neg2) / 4.0, -1)).argmax())
    only = int((a - 0.5 * torch.log_softmax(torch.tensor(neg2), -1)).argmax())
    assert both != only
    assert _choose(pos2, neg2, temp=4.0)[0] == only


def test_choice_is_per_pair() -> None:
    pos = torch.tensor([[2.0, 1.8, -1.0], [3.0, 2.0, -2.0]])
    neg = torch.tensor([[4.0, 0.0, 0.0], [3.0, 2.0, -9.0]])
    chosen, plain = contrastive_choice(
        pos, neg, torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.1]), torch.tensor([1.0, 1.0])
    )
    assert chosen.tolist() == [1, 0] and plain.tolist() == [0, 0]


# ------------------------------------------------------------------------------------------
# StopRule on hand-made token texts
# ------------------------------------------------------------------------------------------

TEXTS = ["<eos>", "\n", "\n\n", "Q", ":", " the", " cat", "A", "\nQ", ".\n"]
EOS, NL, NLNL, Q, COLON, THE, CAT, A, NLQ, DOTNL = range(10)


def _rule(stop: tuple[str, ...] = DEFAULT_STOP) -> StopRule:
    return StopRule.build(TEXTS, [EOS], stop)


def test_blank_line_as_two_newline_tokens_stops() -> None:
    rule = _rule()
    action, tail = rule.decide("", NL, NL)
    assert action is Action.EMIT and tail == "\n"
    # the plain C+ argmax would complete "\n\n" but contrast picked another token: stop here
    assert rule.decide(tail, THE, NL) == (Action.STOP, tail)
    # when contrast also picks the newline, it is emitted and the rationale is over
    assert rule.decide(tail, NL, NL)[0] is Action.EMIT_AND_FINISH


def test_single_newline_token_blank_line() -> None:
    assert _rule().decide(" cat", NLNL, NLNL)[0] is Action.EMIT_AND_FINISH
    assert _rule().decide(" cat", THE, NLNL)[0] is Action.STOP


def test_new_question_stops() -> None:
    rule = _rule()
    action, tail = rule.decide(".", NL, NL)
    assert action is Action.EMIT
    action, tail = rule.decide(tail, Q, Q)
    assert action is Action.EMIT and tail == "\nQ"
    assert rule.decide(tail, COLON, COLON)[0] is Action.EMIT_AND_FINISH
    assert rule.decide("", NLQ, NLQ)[0] is Action.EMIT
    assert rule.decide("\n", Q, A)[0] is Action.EMIT  # "\nA" is no stop string
    assert rule.decide(" x", DOTNL, DOTNL)[0] is Action.EMIT


def test_eos_stops_without_emitting() -> None:
    rule = _rule()
    assert rule.decide("abc", EOS, EOS)[0] is Action.STOP
    assert rule.decide("abc", THE, EOS)[0] is Action.STOP  # the plain argmax ends the text
    assert rule.decide("abc", EOS, THE)[0] is Action.STOP
    assert rule.decide("abc", THE, CAT)[0] is Action.EMIT


def test_custom_stop_strings_and_finalize() -> None:
    rule = _rule((" cat",))
    assert rule.decide("", CAT, CAT)[0] is Action.EMIT_AND_FINISH
    assert rule.decide("", NLNL, NLNL)[0] is Action.EMIT
    assert finalize_text(" It is so.\n\nQ: next", DEFAULT_STOP) == "It is so."
    assert finalize_text("a\nQ: b\n\nc", DEFAULT_STOP) == "a"
    assert finalize_text("  plain  ", DEFAULT_STOP) == "plain"


# ------------------------------------------------------------------------------------------
# The engine on the tiny model
# ------------------------------------------------------------------------------------------


def _requests(
    pairs: list[tuple[str, str]], settings: list[ContrastSettings] | ContrastSettings
) -> list[DecodeRequest]:
    if isinstance(settings, ContrastSettings):
        settings = [settings] * len(pairs)
    return [
        DecodeRequest(f"r{i}", pos, neg, s)
        for i, ((pos, neg), s) in enumerate(zip(pairs, settings, strict=True))
    ]


def test_tiny_matches_cfg_oracle(tiny_engine: ReferenceEngine) -> None:
    pairs = strategyqa_pairs(36, demos=2)
    lengths = {len(tiny_engine.encode(p)) for p, _ in pairs}
    assert max(lengths) - min(lengths) > 50  # mixed lengths share batches
    # mixed lambdas, and some requests stop early on a custom stop string
    settings = [
        ContrastSettings(
            lam=(0.5, 0.3, 0.7)[i % 3],
            max_new_tokens=16,
            stop=DEFAULT_STOP if i % 4 else (" the", "."),
        )
        for i in range(len(pairs))
    ]
    requests = _requests(pairs, settings)
    results = tiny_engine.generate(requests)
    assert [r.request_id for r in results] == [q.request_id for q in requests]
    reasons = {r.finish_reason for r in results}
    assert reasons == {FinishReason.LENGTH, FinishReason.STOP}
    # a prefix comparison: enough ids must be compared for it to mean something
    assert sum(len(r.token_ids) for r in results) >= 8 * len(results)
    for request, result in zip(requests, results, strict=True):
        assert request.neg_prompt is not None
        expected = cfg_generate(
            tiny_engine.model,
            tiny_engine.tokenizer,
            request.pos_prompt,
            request.neg_prompt,
            request.settings.lam,
            request.settings.max_new_tokens,
        )
        _check_against(result, expected)
        assert result.completion_tokens == len(result.token_ids)
        assert result.prompt_tokens == len(tiny_engine.encode(request.pos_prompt)) + len(
            tiny_engine.encode(request.neg_prompt)
        )


def test_tiny_mixed_settings_match_the_method_loop(tiny_engine: ReferenceEngine) -> None:
    """Every setting at once, per pair in one batch, against the loop written from docs/METHOD.md
    (tests/oracle.py): tokens, finish reason and text exactly."""
    pairs = strategyqa_pairs(18, demos=2)
    settings = [
        ContrastSettings(
            lam=(0.2, 0.5, 0.8)[i % 3],
            alpha=(0.0, 0.05, 0.3)[(i // 3) % 3],
            temperature=(0.6, 1.0, 1.7)[(i // 2) % 3],
            max_new_tokens=20,
            stop=(("e",), DEFAULT_STOP, ("s", "\n\n"))[i % 3],
        )
        for i in range(len(pairs))
    ]
    requests = _requests(pairs, settings)
    results = tiny_engine.generate(requests)
    assert_equals_contrastive_loop(
        results, requests, tiny_engine.model, tiny_engine.tokenizer, min_tokens=120
    )


def test_tiny_greedy_matches_transformers(tiny_engine: ReferenceEngine) -> None:
    pairs = strategyqa_pairs(10, demos=1)
    requests = [
        DecodeRequest(f"g{i}", pos, None, ContrastSettings(max_new_tokens=20))
        for i, (pos, _) in enumerate(pairs)
    ]
    for request, result in zip(requests, tiny_engine.generate(requests), strict=True):
        expected = greedy_generate(tiny_engine.model, tiny_engine.tokenizer, request.pos_prompt, 20)
        _check_against(result, expected)


def test_stop_by_text_and_finalized_text(tiny_engine: ReferenceEngine) -> None:
    # stop on anything containing "e" so that every request ends by the text rule
    pairs = strategyqa_pairs(6)
    settings = ContrastSettings(max_new_tokens=24, stop=("e",))
    for result in tiny_engine.generate(_requests(pairs, settings)):
        decoded = tiny_engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        if result.finish_reason is FinishReason.STOP:
            assert "e" not in result.text
            assert result.text == finalize_text(decoded, ("e",))
        else:
            assert "e" not in decoded and len(result.token_ids) == 24


def test_alpha_changes_some_output(tiny_engine: ReferenceEngine) -> None:
    pairs = strategyqa_pairs(8)
    plain = tiny_engine.generate(_requests(pairs, ContrastSettings(max_new_tokens=12)))
    masked = tiny_engine.generate(_requests(pairs, ContrastSettings(alpha=0.5, max_new_tokens=12)))
    assert any(a.token_ids != b.token_ids for a, b in zip(plain, masked, strict=True))


def test_temperature_changes_some_output(tiny_engine: ReferenceEngine) -> None:
    pairs = strategyqa_pairs(8)
    base = tiny_engine.generate(_requests(pairs, ContrastSettings(max_new_tokens=12)))
    hot = tiny_engine.generate(
        _requests(pairs, ContrastSettings(temperature=3.0, max_new_tokens=12))
    )
    assert any(a.token_ids != b.token_ids for a, b in zip(base, hot, strict=True))


def test_batched_equals_unbatched(tiny_model_path: Path) -> None:
    pairs = strategyqa_pairs(10, demos=2)
    requests = _requests(pairs, ContrastSettings(max_new_tokens=16))
    # mix in greedy requests and a different stop set
    requests[3] = DecodeRequest("greedy", pairs[3][0], None, ContrastSettings(max_new_tokens=16))
    requests[5] = DecodeRequest(
        "stop", *pairs[5], ContrastSettings(max_new_tokens=16, stop=(" the",))
    )
    spec = ModelSpec("tiny", tiny_model_path)
    batched = ReferenceEngine(spec, max_batch=16).generate(requests)
    kept = ReferenceEngine(spec, max_batch=16, drop_finished=False).generate(requests)
    small = ReferenceEngine(spec, max_batch=3).generate(requests)
    budget_engine = ReferenceEngine(spec, max_batch=16, max_batch_tokens=600)
    budget = budget_engine.generate(requests)
    assert budget_engine.stats.waves > 1  # the padded-token budget split the call
    one = ReferenceEngine(spec, max_batch=1)
    single = [one.generate([r])[0] for r in requests]
    for results in (kept, small, budget, single):
        assert [r.token_ids for r in results] == [r.token_ids for r in batched]
        assert [r.finish_reason for r in results] == [r.finish_reason for r in batched]
        assert [r.text for r in results] == [r.text for r in batched]


def test_prompt_too_long_is_a_per_request_error(tiny_model_path: Path) -> None:
    engine = ReferenceEngine(ModelSpec("tiny", tiny_model_path), max_model_len=96)
    short = strategyqa_pairs(3, vary=False)
    long_pos = "Q: " + "a long story about rivers and mountains " * 40
    requests = [
        DecodeRequest("ok0", *short[0], ContrastSettings(max_new_tokens=8)),
        DecodeRequest("long", long_pos, short[1][1], ContrastSettings(max_new_tokens=8)),
        DecodeRequest("ok1", short[1][0], None, ContrastSettings(max_new_tokens=8)),
        DecodeRequest("ok2", *short[2], ContrastSettings(max_new_tokens=8)),
        DecodeRequest("empty", "", None, ContrastSettings(max_new_tokens=8)),
    ]
    results = engine.generate(requests)
    assert [r.request_id for r in results] == ["ok0", "long", "ok1", "ok2", "empty"]
    by_id = {r.request_id: r for r in results}
    assert by_id["long"].finish_reason is FinishReason.ERROR
    assert by_id["long"].error is not None and by_id["long"].error.startswith("prompt_too_long")
    assert by_id["long"].token_ids == [] and by_id["long"].prompt_tokens > 96
    assert by_id["empty"].finish_reason is FinishReason.ERROR
    for rid in ("ok0", "ok1", "ok2"):
        assert by_id[rid].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        assert by_id[rid].error is None
    # the limit counts the prompt plus max_new_tokens
    n = len(engine.encode(short[0][0]))
    fits = DecodeRequest("fits", short[0][0], None, ContrastSettings(max_new_tokens=96 - n))
    over = DecodeRequest("over", short[0][0], None, ContrastSettings(max_new_tokens=97 - n))
    fit, too = engine.generate([fits, over])
    assert fit.finish_reason is not FinishReason.ERROR
    assert too.finish_reason is FinishReason.ERROR
    assert engine.stats.requests == 7
    assert engine.stats.completion_tokens == sum(r.completion_tokens for r in [*results, fit])


def test_zero_new_tokens(tiny_engine: ReferenceEngine) -> None:
    pos, neg = strategyqa_pairs(1)[0]
    (result,) = tiny_engine.generate(
        [DecodeRequest("z", pos, neg, ContrastSettings(max_new_tokens=0))]
    )
    assert result.finish_reason is FinishReason.LENGTH and result.token_ids == []


# ------------------------------------------------------------------------------------------
# SmolLM2 (real model, real items)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_path: Path) -> ReferenceEngine:
    return ReferenceEngine(ModelSpec("smollm2-135m", smollm2_path), max_batch=8)


@pytest.mark.slow
def test_smollm2_matches_cfg_oracle(smollm2_engine: ReferenceEngine) -> None:
    pairs = strategyqa_pairs(8, demos=2)
    requests = _requests(pairs, ContrastSettings(max_new_tokens=24))
    results = smollm2_engine.generate(requests)
    assert sum(len(r.token_ids) for r in results) > 8
    for request, result in zip(requests, results, strict=True):
        assert request.neg_prompt is not None
        expected = cfg_generate(
            smollm2_engine.model,
            smollm2_engine.tokenizer,
            request.pos_prompt,
            request.neg_prompt,
            0.5,
            len(result.token_ids) or 1,
        )
        _check_against(result, expected)


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2_engine: ReferenceEngine) -> None:
    pairs = strategyqa_pairs(4, demos=2)
    requests = [
        DecodeRequest(f"g{i}", pos, None, ContrastSettings(max_new_tokens=24))
        for i, (pos, _) in enumerate(pairs)
    ]
    for request, result in zip(requests, smollm2_engine.generate(requests), strict=True):
        n = len(result.token_ids) or 1
        expected = greedy_generate(
            smollm2_engine.model, smollm2_engine.tokenizer, request.pos_prompt, n
        )
        _check_against(result, expected)
        # the text rule ended it (or EOS, or the length): never an invented next question
        assert "\nQ:" not in result.text and "\n\n" not in result.text


def test_prompt_char_bound_is_safe_for_the_tokenizer(tiny_model_path: Path) -> None:
    """Past `max_prompt_chars` a prompt surely has more tokens than the context: texts just over
    the bound, made of the vocabulary's longest entries and of plain words, tokenize longer."""
    engine = ReferenceEngine(ModelSpec("tiny", tiny_model_path), max_model_len=64)
    bound = engine.max_prompt_chars
    assert bound is not None and bound >= 64
    vocab = engine.tokenizer.get_vocab()
    longest = max(vocab, key=len)
    text = engine.tokenizer.convert_tokens_to_string([longest])
    for sample in (text * (bound // max(len(text), 1) + 1), "word " * (bound // 5 + 1)):
        sample = sample[: bound + 1]
        assert len(engine.tokenizer(sample)["input_ids"]) > 64
