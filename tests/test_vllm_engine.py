"""The vLLM pair engine against the reference engine and transformers' CFG oracle, token for token.

Real few-shot prompts (StrategyQA and CREAK items, 0-6 demonstrations, so prompt lengths differ
widely) through the real vLLM CPU build with the tiny random model; SmolLM2 on real items is slow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from contrail.client.types import (
    DecodingMode,
    DecodingSettings,
    FinishReason,
    Item,
    ItemError,
    Perturbation,
    RationaleRecord,
    Tag,
    TaskName,
)
from contrail.core.tasks.formats import load_items
from contrail.worker.engine.agreement import first_divergence
from contrail.worker.engine.base import ContrastSettings, DecodeRequest, DecodeResult
from contrail.worker.engine.reference import ReferenceEngine
from contrail.worker.engine.vllm_pair import (
    EngineMisconfigured,
    VllmOptions,
    VllmPairEngine,
    check_config_in_force,
)
from contrail.worker.generation import pipeline
from tests.research_data import DATA

from .oracle import assert_equals_contrastive_loop, cfg_generate

pytestmark = pytest.mark.vllm


def _items(task: TaskName, path: Path, n: int) -> list[Item]:
    loaded = load_items(path, task)
    return loaded.items[:n]


def _requests(
    n_per_task: int, max_new_tokens: int, settings: DecodingSettings
) -> list[DecodeRequest]:
    """Real prompts of mixed lengths: each third of the items gets 0, 2 or 6 demonstrations."""
    requests: list[DecodeRequest] = []
    for task, path in (
        (TaskName.STRATEGYQA, DATA / "strategyqa" / "dev.json"),
        (TaskName.CREAK, DATA / "creak" / "dev.json"),
    ):
        items = _items(task, path, n_per_task)
        for k, shots in enumerate((0, 2, 6)):
            chunk = items[k::3]
            s = settings.model_copy(
                update={"num_demonstrations": shots, "max_new_tokens": max_new_tokens}
            )
            requests += pipeline.plan(chunk, task, s, "test").decode_requests
    return requests


@pytest.fixture(scope="module")
def tiny_vllm(tiny_model_path: Path) -> Iterator[VllmPairEngine]:
    engine = VllmPairEngine(
        str(tiny_model_path),
        options=VllmOptions(kv_cache_bytes=64 * 1024**2, enforce_eager=True),
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_reference(tiny_model_path: Path) -> ReferenceEngine:
    return ReferenceEngine(str(tiny_model_path), max_batch=64)


def _assert_same(ours: Sequence[DecodeResult], theirs: Sequence[DecodeResult], label: str) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.request_id == b.request_id
        assert a.token_ids == b.token_ids, f"{label}: {a.request_id} differs"
        assert (a.finish_reason, a.text) == (b.finish_reason, b.text), f"{label}: {a.request_id}"


def _assert_matches_cfg(
    results: Sequence[DecodeResult],
    requests: Sequence[DecodeRequest],
    model: object,
    tokenizer: object,
    min_tokens: int,
) -> None:
    """Our ids are a prefix of CFG's (it has no stop rule); by LENGTH, all of it. At least
    `min_tokens` ids are compared in all, so empty or cut outputs cannot pass as prefixes."""
    compared = 0
    for res, req in zip(results, requests, strict=True):
        assert req.neg_prompt is not None
        cfg = cfg_generate(
            model,
            tokenizer,
            req.pos_prompt,
            req.neg_prompt,
            req.settings.lam,
            req.settings.max_new_tokens,
        )
        assert res.token_ids == cfg[: len(res.token_ids)], f"CFG oracle differs on {req.request_id}"
        if res.finish_reason is FinishReason.LENGTH:
            assert len(res.token_ids) == len(cfg)
        compared += len(res.token_ids)
    assert compared >= min_tokens, f"only {compared} tokens compared with CFG"


def _assert_equals_oracle(
    results: Sequence[DecodeResult],
    requests: Sequence[DecodeRequest],
    oracle_engine: ReferenceEngine,
    min_tokens: int,
) -> int:
    return assert_equals_contrastive_loop(
        results, requests, oracle_engine.model, oracle_engine.tokenizer, min_tokens
    )


def test_pair_engine_equals_reference_and_cfg_on_tiny_model(
    tiny_vllm: VllmPairEngine, tiny_reference: ReferenceEngine
) -> None:
    requests = _requests(18, 32, DecodingSettings())
    contrastive = [r for r in requests if r.neg_prompt is not None]
    assert len(contrastive) >= 32
    lengths = sorted(len(tiny_vllm.tokenizer(r.pos_prompt)["input_ids"]) for r in contrastive)
    assert lengths[-1] > 4 * lengths[0], "prompt lengths should differ widely"

    ours = tiny_vllm.generate(contrastive)
    assert all(r.finish_reason is not FinishReason.ERROR for r in ours)
    _assert_same(ours, tiny_reference.generate(contrastive), "reference")
    _assert_matches_cfg(
        ours, contrastive, tiny_reference.model, tiny_reference.tokenizer, 16 * len(contrastive)
    )


def _mixed_settings(requests: Sequence[DecodeRequest]) -> list[DecodeRequest]:
    """Per pair: lambda, alpha, temperature and stop strings cycling out of phase, so neighbours
    in the batch differ in every setting; the stop sets make some rationales end on text."""
    out = []
    for i, req in enumerate(requests):
        settings = ContrastSettings(
            lam=(0.2, 0.5, 0.8)[i % 3],
            alpha=(0.0, 0.05, 0.3)[(i // 3) % 3],
            temperature=(0.6, 1.0, 1.7)[(i // 2) % 3],
            max_new_tokens=24,
            stop=(("e",), req.settings.stop, ("s", "\n\n"), req.settings.stop)[i % 4],
        )
        out.append(dataclasses.replace(req, settings=settings))
    return out


def test_one_batch_of_mixed_settings_equals_the_oracle_per_pair(
    tiny_vllm: VllmPairEngine, tiny_reference: ReferenceEngine
) -> None:
    requests = _mixed_settings(
        [r for r in _requests(12, 24, DecodingSettings()) if r.neg_prompt is not None]
    )
    assert len(requests) == 24
    waves = tiny_vllm.stats.waves
    ours = tiny_vllm.generate(requests)
    assert tiny_vllm.stats.waves == waves + 1, "the pairs were not decoded as one batch"
    assert {r.finish_reason for r in ours} == {FinishReason.STOP, FinishReason.LENGTH}
    _assert_equals_oracle(ours, requests, tiny_reference, min_tokens=240)
    # The per-pair settings matter: the same pairs all on the defaults decode differently.
    uniform = [
        dataclasses.replace(q, settings=ContrastSettings(max_new_tokens=24, stop=q.settings.stop))
        for q in requests
    ]
    plain = tiny_vllm.generate(uniform)
    changed = sum(a.token_ids != b.token_ids for a, b in zip(ours, plain, strict=True))
    assert changed >= len(requests) // 2, f"only {changed} pairs changed with their settings"


@pytest.fixture(scope="module")
def desync_vllm(tiny_model_path: Path) -> Iterator[VllmPairEngine]:
    """A 64-token step budget splits prefills; a 4 MiB KV cache and mixed lengths add pressure:
    pairs lose lockstep (partners scheduled apart) and are continued from their agreed prefix."""
    engine = VllmPairEngine(
        str(tiny_model_path),
        options=VllmOptions(
            kv_cache_bytes=4 * 1024**2,
            max_num_batched_tokens=64,
            max_num_seqs=64,
            max_model_len=1024,
            enforce_eager=True,
            max_attempts=8,
        ),
    )
    yield engine
    engine.close()


def _desync_requests() -> list[DecodeRequest]:
    return [r for r in _requests(6, 24, DecodingSettings()) if r.neg_prompt is not None]


def test_pair_engine_keeps_equality_when_pairs_lose_lockstep(
    desync_vllm: VllmPairEngine, tiny_reference: ReferenceEngine
) -> None:
    engine = desync_vllm
    requests = _desync_requests()
    engine.llm.reset_prefix_cache()  # the same schedule whichever test ran first
    before = dataclasses.replace(engine.stats)
    ours = engine.generate(requests)
    assert all(r.finish_reason is not FinishReason.ERROR for r in ours), [r.error for r in ours]
    continued = engine.stats.pairs_continued - before.pairs_continued
    assert continued > 0, "the desync protocol was not exercised"
    # Every finished pair carries what losing lockstep cost it.
    assert sum(r.continuations for r in ours) == continued
    assert sum(r.extra_tokens for r in ours) == engine.stats.extra_tokens - before.extra_tokens
    _assert_same(ours, tiny_reference.generate(requests), "reference under desync")
    # The re-continued pairs against the independent loop (shares no code with either engine).
    again = [(res, req) for res, req in zip(ours, requests, strict=True) if res.continuations]
    _assert_equals_oracle(
        [res for res, _ in again], [req for _, req in again], tiny_reference, 8 * len(again)
    )


def test_pair_that_keeps_losing_lockstep_is_a_per_item_error(
    desync_vllm: VllmPairEngine, tiny_reference: ReferenceEngine
) -> None:
    """With one attempt allowed, a pair that loses lockstep ends as `lockstep_exhausted` (an
    ItemError for its item, never a hang or a failed batch); the other pairs are unaffected."""
    engine = desync_vllm
    plans = [
        pipeline.plan(_items(task, path, 6), task, DecodingSettings(max_new_tokens=24), "t")
        for task, path in (
            (TaskName.STRATEGYQA, DATA / "strategyqa" / "dev.json"),
            (TaskName.CREAK, DATA / "creak" / "dev.json"),
        )
    ]
    engine.options.max_attempts = 1
    engine.llm.reset_prefix_cache()
    before = dataclasses.replace(engine.stats)
    try:
        results = [engine.generate(plan.decode_requests) for plan in plans]
    finally:
        engine.options.max_attempts = 8
    failed = [r for batch in results for r in batch if r.finish_reason is FinishReason.ERROR]
    assert failed, "no pair lost lockstep: the test provoked nothing"
    assert engine.stats.lockstep_failures - before.lockstep_failures == len(failed)
    for res in failed:
        assert res.error is not None and res.error.startswith("lockstep_exhausted"), res.error
        assert res.token_ids == [] and res.continuations == 1 and res.extra_tokens > 0
    out = [
        o
        for plan, batch in zip(plans, results, strict=True)
        for o in pipeline.to_records(plan, batch)
    ]
    errors = [o for o in out if isinstance(o, ItemError)]
    assert {e.code for e in errors} == {"lockstep_exhausted"} and len(errors) == len(failed)
    # The pairs that kept lockstep are decoded as ever.
    requests = [q for plan in plans for q in plan.decode_requests]
    kept = [
        (res, req)
        for res, req in zip([r for b in results for r in b], requests, strict=True)
        if res.finish_reason is not FinishReason.ERROR
    ]
    assert kept
    _assert_equals_oracle([r for r, _ in kept], [q for _, q in kept], tiny_reference, 8 * len(kept))


def test_greedy_mode_equals_plain_vllm_greedy(
    tiny_vllm: VllmPairEngine, tiny_reference: ReferenceEngine
) -> None:
    from vllm import SamplingParams

    settings = DecodingSettings(mode=DecodingMode.GREEDY)
    requests = _requests(6, 24, settings)
    assert all(r.neg_prompt is None for r in requests)
    ours = tiny_vllm.generate(requests)
    plain = tiny_vllm.llm.generate(
        [r.pos_prompt for r in requests],
        SamplingParams(temperature=0.0, max_tokens=24, stop=list(settings.stop)),
        use_tqdm=False,
    )
    for res, out in zip(ours, plain, strict=True):
        assert res.text == out.outputs[0].text.strip()
        expected = list(out.outputs[0].token_ids)
        assert res.token_ids == [t for t in expected if t != tiny_vllm.tokenizer.eos_token_id]
    _assert_same(ours, tiny_reference.generate(requests), "reference greedy")


def test_prompt_too_long_is_a_per_request_error(tiny_vllm: VllmPairEngine) -> None:
    ok = DecodeRequest(
        "ok", "Q: Is ice cold?\nA: The answer is yes.", "Q: Is ice cold?\nA: The answer is no."
    )
    huge_text = "word " * 5000
    huge = DecodeRequest("huge", huge_text, huge_text, ContrastSettings(max_new_tokens=8))
    results = tiny_vllm.generate([huge, ok])
    assert results[0].finish_reason is FinishReason.ERROR
    assert results[0].error is not None and results[0].error.startswith("prompt_too_long")
    assert results[1].finish_reason is not FinishReason.ERROR and results[1].completion_tokens > 0


def test_counterfactual_records_swap_roles(tiny_vllm: VllmPairEngine) -> None:
    items = _items(TaskName.STRATEGYQA, DATA / "strategyqa" / "dev.json", 6)
    settings = DecodingSettings(counterfactual_fraction=1.0, max_new_tokens=16)
    out = list(pipeline.generate(tiny_vllm, items, TaskName.STRATEGYQA, settings))
    records = [r for r in out if isinstance(r, RationaleRecord)]
    assert not [e for e in out if isinstance(e, ItemError)]
    assert len(records) == 2 * len(items)
    for rec in records:
        assert rec.decoding.perturbation is Perturbation.WRONG
        if rec.tag is Tag.COUNTERFACTUAL:
            assert rec.answer != rec.gold_answer
            assert rec.decoding.contrast_answer == rec.gold_answer
        else:
            assert rec.answer == rec.gold_answer
            assert rec.decoding.contrast_answer not in (None, "", rec.gold_answer)


# -- SmolLM2 on real items (slow) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_vllm(smollm2_path: Path) -> Iterator[VllmPairEngine]:
    engine = VllmPairEngine(
        str(smollm2_path),
        options=VllmOptions(kv_cache_bytes=512 * 1024**2, enforce_eager=True),
    )
    yield engine
    engine.close()


def _strategyqa_requests(settings: DecodingSettings, n: int) -> list[DecodeRequest]:
    items = _items(TaskName.STRATEGYQA, DATA / "strategyqa" / "dev.json", n)
    return pipeline.plan(items, TaskName.STRATEGYQA, settings, "smollm2").decode_requests


@pytest.mark.slow
def test_pair_engine_equals_reference_and_cfg_on_smollm2(
    smol_vllm: VllmPairEngine, smollm2_path: Path
) -> None:
    # Two demonstrations keep the unbatched CFG oracle affordable on CPU (it runs item by item).
    requests = _strategyqa_requests(DecodingSettings(max_new_tokens=40, num_demonstrations=2), 8)
    assert len(requests) >= 8
    ours = smol_vllm.generate(requests)
    assert all(r.finish_reason is not FinishReason.ERROR for r in ours)
    reference = ReferenceEngine(str(smollm2_path), max_batch=16)
    _assert_same(ours, reference.generate(requests), "reference on SmolLM2")
    _assert_matches_cfg(ours, requests, reference.model, reference.tokenizer, 8 * len(requests))


@pytest.mark.slow
def test_pair_engine_equals_reference_in_bfloat16_up_to_near_ties(smollm2_path: Path) -> None:
    """The GPU default precision, on this CPU (AVX-512 BF16): vLLM's pair engine and the
    reference engine, both in bfloat16, decode the same tokens except where two candidates'
    scores are within one bf16 step (agreement.BF16_TIE) under the reference model; from such a
    step on the two continuations are different rationales and are not compared. Most pairs must
    agree entirely, and every divergence must be such a near-tie."""
    requests = _strategyqa_requests(DecodingSettings(max_new_tokens=32, num_demonstrations=2), 8)
    engine = VllmPairEngine(
        str(smollm2_path),
        options=VllmOptions(dtype="bfloat16", kv_cache_bytes=256 * 1024**2, enforce_eager=True),
    )
    assert engine.llm.llm_engine.vllm_config.model_config.dtype == torch.bfloat16
    ours = engine.generate(requests)
    reference = ReferenceEngine(str(smollm2_path), dtype="bfloat16", max_batch=16)
    theirs = reference.generate(requests)
    agreed = 0
    divergences = []
    for request, a, b in zip(requests, ours, theirs, strict=True):
        assert a.finish_reason is not FinishReason.ERROR, a.error
        found = first_divergence(
            reference.model, reference.tokenizer, request, a.token_ids, b.token_ids
        )
        agreed += len(a.token_ids) if found is None else found.step
        if found is not None:
            divergences.append(found)
            assert found.near_tie, found
    assert len(divergences) <= len(requests) // 2, divergences
    assert agreed >= 8 * len(requests), f"only {agreed} tokens agreed"


@pytest.mark.slow
def test_contrastive_modes_differ_from_greedy_on_real_items(smol_vllm: VllmPairEngine) -> None:
    texts = {}
    for name, settings in {
        "greedy": DecodingSettings(mode=DecodingMode.GREEDY),
        "wrong": DecodingSettings(perturbation=Perturbation.WRONG),
        "empty": DecodingSettings(perturbation=Perturbation.EMPTY),
    }.items():
        results = smol_vllm.generate(
            _strategyqa_requests(settings.model_copy(update={"max_new_tokens": 40}), 8)
        )
        assert all(r.finish_reason is not FinishReason.ERROR for r in results)
        texts[name] = [r.text for r in results]
    for mode in ("wrong", "empty"):
        differing = sum(a != b for a, b in zip(texts[mode], texts["greedy"], strict=True))
        assert differing >= 4, f"contrastive-{mode} should differ from greedy on most items"
    assert all(texts["greedy"]), "greedy rationales should not be empty"


# ------------------------------------------------------------- the configuration in force


def test_the_worker_refuses_async_scheduling_and_model_runner_v2(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings the pair processor cannot run under stop the worker at start, with the reason,
    before a model is loaded."""
    from contrail.worker.consumer.loop import make_engine
    from contrail.worker.settings import WorkerSettings

    settings = WorkerSettings(
        engine="vllm",
        model=str(tiny_model_path),
        model_cache_dir=tmp_path,
        engine_options={"extra": {"async_scheduling": True}},
    )
    with pytest.raises(EngineMisconfigured, match="async_scheduling on"):
        make_engine(settings)
    spec = {"extra": {"speculative_config": {"method": "ngram", "num_speculative_tokens": 2}}}
    with pytest.raises(EngineMisconfigured, match="speculative decoding on"):
        make_engine(settings.model_copy(update={"engine_options": spec}))
    # The V2 processor asked for on a build without Triton (this CPU build): refused, not a
    # vLLM config error deep inside LLM().
    with pytest.raises(EngineMisconfigured, match="has no Triton"):
        make_engine(settings.model_copy(update={"engine_options": {"runner": "v2"}}))
    with pytest.raises(EngineMisconfigured, match="use 'v1' or 'v2'"):
        make_engine(settings.model_copy(update={"engine_options": {"runner": "v3"}}))
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(EngineMisconfigured, match="forces Model Runner V2"):
        make_engine(settings.model_copy(update={"engine_options": {}}))


def test_an_engine_whose_processor_is_not_applied_refuses_to_serve(tiny_model_path: Path) -> None:
    """The start-up self-check decodes one known pair: with the pair processor dropped (here by
    an `extra` option, as a user's CONTRAIL_ENGINE_OPTIONS could), the members do not come back
    in lockstep with the processor's code, and the engine refuses before serving."""
    options = VllmOptions(
        kv_cache_bytes=64 * 1024**2, enforce_eager=True, extra={"logits_processors": []}
    )
    with pytest.raises(EngineMisconfigured, match="self-check failed"):
        VllmPairEngine(str(tiny_model_path), options=options)


def test_the_running_engine_is_v1_synchronous_and_counts_real_blocks(
    tiny_vllm: VllmPairEngine,
) -> None:
    config = tiny_vllm.llm.llm_engine.vllm_config
    check_config_in_force(config)  # what the engine was built with passes
    assert tiny_vllm._block_size == config.cache_config.block_size
    # The check reads the configuration, not the options asked for.
    for runner, use_v2, asynchronous, speculative, words in [
        ("v1", True, False, None, "chose Model Runner V2"),
        ("v2", False, False, None, "chose Model Runner V1"),
        ("v1", False, True, None, "async scheduling"),
        ("v1", False, False, object(), "speculative decoding"),
    ]:
        fake = SimpleNamespace(
            use_v2_model_runner=use_v2,
            scheduler_config=SimpleNamespace(async_scheduling=asynchronous),
            speculative_config=speculative,
        )
        with pytest.raises(EngineMisconfigured, match=words):
            check_config_in_force(fake, runner)
    # The V2 processor's own configuration passes.
    check_config_in_force(
        SimpleNamespace(
            use_v2_model_runner=True,
            scheduler_config=SimpleNamespace(async_scheduling=False),
            speculative_config=None,
        ),
        "v2",
    )


def test_the_engine_turns_aot_compilation_off_unless_the_operator_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM 0.32 with torch 2.13 cannot load the AOT-compiled models it saves, so every worker
    restart recompiled (bench/cold_start.py); the engine starts vLLM with AOT compilation off,
    which leaves the inductor cache to serve restarts, and an operator's own choice stands."""
    import os

    from contrail.worker.engine.vllm_pair import _configure_environment

    # What the engine sets before LLM() (vLLM reads it then; once an in-process engine has
    # started, vllm.envs answers from a cache, so the environment is what to check).
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    _configure_environment(VllmOptions())
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    _configure_environment(VllmOptions())
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"
