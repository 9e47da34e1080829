"""The trained LAS simulator: class mapping, cross-fitting by item, training on separate records,
the committed heads (tied to their reader, the default for their task), provenance, and a
validation on real dev rationales (human vs shuffled)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from contrail.client.types import Tag, TaskName
from contrail.distill.heads import HeadMismatch, LinearHead, SimulatorHead, builtin_head
from contrail.distill.las import evaluate_las, paired_difference, record_options
from contrail.distill.report import main
from contrail.distill.simulators import (
    HiddenStateEncoder,
    TrainedSimulator,
    answer_class,
    fold_of,
    option_of_class,
)
from tests.research_data import DATA
from tests.test_evaluation import make_record


def test_answer_classes_round_trip() -> None:
    yes_no = make_record("a", "x", answer="no")
    no_yes = make_record("b", "x", answer="no", choices=["no", "yes"])
    # Binary tasks: the class is the option itself, whatever order the record lists them in.
    assert answer_class(yes_no, ["yes", "no"], "no") == answer_class(no_yes, ["no", "yes"], "no")
    assert option_of_class(no_yes, ["no", "yes"], 1) == "no"
    mc = make_record("c", "x", answer="park", task=TaskName.CSQA, choices=["bank", "park", "sea"])
    assert answer_class(mc, ["bank", "park", "sea"], "park") == 1  # shown choices: position
    assert option_of_class(mc, ["bank", "park", "sea"], 2) == "sea"
    free = make_record("d", "x", answer="Paris", task=TaskName.GENERIC, choices=None)
    opts = record_options(free)
    assert opts is not None and answer_class(free, opts, "Paris") is None  # not shown: no class


def test_folds_keep_an_items_records_together() -> None:
    assert fold_of("item-7", 5, 0) == fold_of("item-7", 5, 0)
    folds = [fold_of(f"item-{i}", 5, 0) for i in range(500)]
    assert set(folds) == set(range(5))
    assert min(folds.count(k) for k in range(5)) > 60  # roughly even
    assert [fold_of(f"item-{i}", 5, 1) for i in range(50)] != folds[:50]  # the seed matters


def test_linear_head_round_trips_and_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    for k in (2, 3):  # binary (one logit) and multinomial heads
        feats = {c: rng.normal(size=(60, 5)).astype(np.float32) for c in ("qr", "q", "r")}
        y = np.arange(60) % k
        head = LinearHead.fit(feats, y, c=1.0)  # type: ignore[arg-type]
        saved = SimulatorHead(TaskName.CSQA, head, np.zeros((3, 5)), {"format": 1, "model": "m"})
        loaded = SimulatorHead.from_bytes(saved.to_bytes()).head
        x = np.vstack([head.rows(c, feats) for c in ("qr", "q", "r")])  # type: ignore[arg-type]
        reference = LogisticRegression(C=1.0, max_iter=5000).fit(x, np.concatenate([y] * 3))
        ours = loaded.proba("qr", feats, k)  # type: ignore[arg-type]
        np.testing.assert_allclose(ours, reference.predict_proba(head.rows("qr", feats)), atol=1e-4)  # type: ignore[arg-type]


def cue_records(n: int, *, shuffled: bool = False, prefix: str = "s") -> list:  # type: ignore[type-arg]
    """Factual and counterfactual records whose rationale states its answer in words the tiny
    model reads ("yes yes yes" / "no no no"); `shuffled` gives every record another item's
    rationale (from the record four items on, an independent answer)."""
    records = []
    for i in range(n):
        gold = "yes" if (i * 7) % 3 else "no"
        for tag, answer in (
            (Tag.FACTUAL, gold),
            (Tag.COUNTERFACTUAL, "no" if gold == "yes" else "yes"),
        ):
            source = (i + 4) % n if shuffled else i
            src_gold = "yes" if (source * 7) % 3 else "no"
            src_answer = src_gold if tag is Tag.FACTUAL else ("no" if src_gold == "yes" else "yes")
            records.append(
                make_record(
                    f"{prefix}{i}",
                    f"It is {src_answer}, {src_answer}, {src_answer}.",
                    question=f"Is thing number {i} true?",
                    answer=answer,
                    gold=gold,
                    tag=tag,
                )
            )
    return records


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_path: Path) -> HiddenStateEncoder:
    return HiddenStateEncoder(str(tiny_model_path), layer=2, max_batch_tokens=2048)


def test_crossfitted_simulator_reads_rationales(tiny_encoder: HiddenStateEncoder) -> None:
    sim = TrainedSimulator(encoder=tiny_encoder, folds=4, seed=0, c=1.0)
    human = cue_records(40)
    result, sims = evaluate_las(human, sim, reps=200)
    # Factual and counterfactual records of an item share the question but not the answer, so
    # the question alone is at most right once per item; the rationale says the answer.
    assert result.scored == 80 and result.skipped == 0
    assert result.acc_q.value <= 0.5 + 1e-9
    assert result.acc_qr.value >= 0.9 and result.las.value >= 0.35
    info = result.simulator_info
    assert info is not None and info.kind == "trained" and info.folds == 4
    assert info.train_records == 80 and info.train_items == 40 and info.seed == 0
    assert info.model == tiny_encoder.model_name and info.layer == 2
    assert info.feature_seconds > 0
    shuffled_result, shuffled = evaluate_las(cue_records(40, shuffled=True), sim, reps=200)
    diff = paired_difference(sims, shuffled, reps=200)
    assert diff["las"].low > 0 and shuffled_result.las.value < result.las.value


def test_crossfit_never_scores_an_item_with_a_head_that_saw_it(
    tiny_encoder: HiddenStateEncoder,
) -> None:
    # Answers are coin flips that nothing in the text predicts, but every question is unique, so
    # a head that had seen an item could memorise it. Held out, it cannot beat chance by much.
    records = [
        make_record(f"m{i}", "Some words here.", question=f"Is item {i} so?", answer=answer)
        for i, answer in enumerate("yes" if (i * 37 + 11) % 7 < 3 else "no" for i in range(60))
    ]
    sim = TrainedSimulator(encoder=tiny_encoder, folds=5, c=100.0)
    result, _ = evaluate_las(records, sim, reps=10)
    assert result.acc_qr.value < 0.75 and result.acc_q.value < 0.75


def test_trained_on_separate_records_skips_evaluated_items(
    tiny_encoder: HiddenStateEncoder,
) -> None:
    train = cue_records(30, prefix="t") + cue_records(5, prefix="e")  # 5 items also evaluated
    sim = TrainedSimulator(encoder=tiny_encoder, train_records=train, train_source="t.jsonl", c=1.0)
    result, _ = evaluate_las(cue_records(12, prefix="e"), sim, reps=50)
    info = result.simulator_info
    assert info is not None and info.folds is None and "t.jsonl" in info.training
    assert (info.train_records, info.train_items) == (60, 30)  # the 5 "e" items left out
    assert result.acc_qr.value >= 0.9


def test_too_few_items_is_a_clear_error(tiny_encoder: HiddenStateEncoder) -> None:
    with pytest.raises(ValueError, match="at least 20 scorable items"):
        evaluate_las(cue_records(6), TrainedSimulator(encoder=tiny_encoder), reps=10)


def test_eval_cli_trained_simulator_writes_provenance(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in cue_records(24)))
    out = tmp_path / "q.json"
    args = ["eval", str(path), "--simulator", str(tiny_model_path), "--simulator-layer", "2"]
    assert (
        main([*args, "--bootstrap", "50", "--json", str(out), "--report-dir", str(tmp_path)]) == 0
    )
    las = json.loads(out.read_text())[str(path)]["las"]
    assert las["simulator_info"]["kind"] == "trained" and las["simulator_info"]["folds"] == 5
    report = (tmp_path / "report.md").read_text()
    assert "simulator `" in report and "cross-fitted" in report
    with pytest.raises(ValueError, match="train-data"):
        main([*args, "--train-data", str(tmp_path / "missing.jsonl")])


@pytest.fixture(scope="module")
def smollm2_encoder(smollm2_path: Path) -> HiddenStateEncoder:
    # by name, as `contrail eval` does: the committed heads know their reader by this name
    return HiddenStateEncoder("smollm2-135m", layer=16, cache_dir=smollm2_path.parent)


@pytest.mark.parametrize("task", [TaskName.STRATEGYQA, TaskName.CREAK])
def test_committed_heads_are_tied_to_their_reader(
    task: TaskName, smollm2_encoder: HiddenStateEncoder, tiny_encoder: HiddenStateEncoder
) -> None:
    head = builtin_head(task)
    assert head is not None and (head.model, head.layer) == ("smollm2-135m", 16)
    assert "train" in head.meta["train_source"] and head.meta["train_items"] >= 2000
    head.check_reader(smollm2_encoder)  # the reader it was trained on
    with pytest.raises(HeadMismatch, match="smollm2-135m layer 16, not on"):
        head.check_reader(tiny_encoder)
    stale = dataclasses.replace(head, meta={**head.meta, "prompt_sha256": "0" * 64})
    with pytest.raises(HeadMismatch, match="another prompt format"):
        stale.check_reader(smollm2_encoder)
    # other weights under the same name and layer read the probe prompts differently
    other = dataclasses.replace(head, probe=head.probe * 1.01)
    with pytest.raises(HeadMismatch, match="reads the probe prompts differently"):
        other.check_reader(smollm2_encoder)
    records = cue_records(24) if task is TaskName.STRATEGYQA else []
    if records:  # asking for the head with another reader is an error, not a fallback
        with pytest.raises(HeadMismatch):
            evaluate_las(records, TrainedSimulator(encoder=tiny_encoder, training="head"))


def test_committed_head_is_the_default_for_its_task(smollm2_encoder: HiddenStateEncoder) -> None:
    claims = [
        ("The sun rises in the east.", "true", "The sun rises in the east every morning."),
        ("Cats can fly.", "false", "Cats have no wings and cannot fly."),
        ("Water is wet.", "true", "Water makes things wet."),
        ("Paris is in Spain.", "false", "Paris is the capital of France."),
    ]
    records = [
        make_record(f"c{i}", why, question=q, answer=a, task=TaskName.CREAK)
        for i, (q, a, why) in enumerate(claims)
    ]
    # four items: too few to cross-fit, so only the committed head can have scored them
    result, _ = evaluate_las(records, TrainedSimulator(encoder=smollm2_encoder), reps=20)
    info = result.simulator_info
    assert result.scored == 4 and info is not None and info.folds is None
    assert "train_las_heads.py" in info.training and "CREAK train" in info.training
    assert info.head is not None and "committed creak head" in info.head
    assert info.head_train_seconds is not None and info.head_train_seconds > 0
    with pytest.raises(ValueError, match="at least 20 scorable items"):
        evaluate_las(records, TrainedSimulator(encoder=smollm2_encoder, training="cross-fit"))


@pytest.mark.slow
def test_validation_creak_human_beats_shuffled(smollm2_path: Path) -> None:
    """The benchmark's check (bench/las_validation.py) on the first 200 CREAK dev items with the
    default simulator: human explanations beat their shuffled control, and help beyond the
    question."""
    from bench.las_validation import human_records, validate

    human, shuffled = human_records(TaskName.CREAK, DATA / "creak" / "dev.json", 200, seed=0)
    sim = TrainedSimulator(str(smollm2_path))
    result = validate("trained", sim, human, shuffled, reps=300, seed=0)
    assert result["passes"] == {"las_above_shuffled": True, "acc_qr_above_acc_q": True}


def test_stored_states_are_keyed_by_the_code_that_computed_them(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feature store serves a later run only while the state-computing code is the same: a
    measurement never reads hidden states that other code computed."""
    from contrail.distill import simulators

    store = tmp_path / "states.sqlite"
    texts = ["Q: Is it so?\nA: yes", "Q: Is it not?\nA: no"]
    first = HiddenStateEncoder(str(tiny_model_path), layer=2, store=store)
    want = first.encode(texts)
    again = HiddenStateEncoder(str(tiny_model_path), layer=2, store=store)
    assert np.array_equal(again.encode(texts), want)
    assert again.stored_seconds > 0.0  # read from the store (with what computing them cost)
    monkeypatch.setattr(simulators, "feature_code_version", lambda: "other-code")
    changed = HiddenStateEncoder(str(tiny_model_path), layer=2, store=store)
    assert np.array_equal(changed.encode(texts), want)  # the same model computes the same states
    assert changed.stored_seconds == 0.0  # but computed them: nothing read under another key


def test_only_a_committed_head_reading_its_own_task_is_called_validated(
    tiny_encoder: HiddenStateEncoder,
) -> None:
    # eval-student states the simulator's validation beside each LAS: what VALIDATION.md
    # validated is the committed CREAK head, not a head cross-fitted on CREAK records, another
    # task's head, a zero-shot simulator or records of several tasks.
    import time

    from contrail.distill.las import SimulatorInfo
    from contrail.distill.student.evaluate import (
        NOT_VALIDATED,
        SIMULATOR_VALIDATION,
        simulator_validation,
    )

    sim = TrainedSimulator(encoder=tiny_encoder)
    creak_head, sqa_head = builtin_head(TaskName.CREAK), builtin_head(TaskName.STRATEGYQA)
    assert creak_head is not None and sqa_head is not None
    committed = sim._head_info(creak_head, time.perf_counter())
    crossfit = sim._make_info(training="cross-fitted", records=40, items=20, start=0.0)
    zero_shot = SimulatorInfo(
        name="z", kind="zero-shot", model="m", training="none (zero-shot)", feature_seconds=0.0
    )
    assert simulator_validation(committed, {"creak"}) == SIMULATOR_VALIDATION["creak"]
    assert SIMULATOR_VALIDATION["creak"].startswith("validated")
    sqa = simulator_validation(sim._head_info(sqa_head, 0.0), {"strategyqa"})
    assert sqa == SIMULATOR_VALIDATION["strategyqa"] and sqa.startswith("not validated")
    assert simulator_validation(committed, {"creak", "csqa"}) == NOT_VALIDATED
    assert simulator_validation(committed, {"strategyqa"}) == NOT_VALIDATED  # another task's head
    assert simulator_validation(crossfit, {"creak"}) == NOT_VALIDATED
    assert simulator_validation(zero_shot, {"creak"}) == NOT_VALIDATED
    assert simulator_validation(None, {"creak"}) == NOT_VALIDATED
    # A CREAK head trained again into the package is not the head that was validated.
    retrained = dataclasses.replace(creak_head, sha256="0" * 64)
    assert simulator_validation(sim._head_info(retrained, 0.0), {"creak"}) == NOT_VALIDATED
