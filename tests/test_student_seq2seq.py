"""Seq2seq students (T5-shaped, as the reference release's T5-3B) on the tiny random T5: what the
encoder reads and the decoder learns, the unshifted loss, training, and the model-backed student's
scores against the model's own label path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from contrail.client.types import Tag, TaskName
from contrail.distill.student.examples import IGNORE, encode
from contrail.distill.student.train import TrainConfig, collate, mean_loss, train, weighted_loss
from tests.test_evaluation import make_record
from tests.test_export_adapters import _records

CHOICES = ["drawer", "garage", "roof"]
MC = {"task": TaskName.CSQA, "question": "Where is a fork kept?", "choices": CHOICES}
QUESTION = "Where is a fork kept? \\n (A) drawer (B) garage (C) roof\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_seq2seq_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_seq2seq_path)


@pytest.fixture(scope="module")
def start(tiny_seq2seq_path: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(tiny_seq2seq_path).decoder_start_token_id)


def _target(ex: Any) -> list[int]:
    """The decoder's target: its inputs shifted left, closed by the last label."""
    return [*ex.decoder_input_ids[1:], ex.labels[-1]]


def test_a_counterfactual_row_reads_its_rationale_and_learns_only_its_answer(
    tokenizer: Any, start: int
) -> None:
    counter = make_record(
        "c0", "Forks sit on the roof.", answer="roof", gold="drawer", tag=Tag.COUNTERFACTUAL,
        contrast="drawer", **MC,  # type: ignore[arg-type]
    )  # fmt: skip
    ex = encode(tokenizer, counter, "scott", decoder_start=start)
    assert ex is not None and ex.decoder_input_ids is not None
    assert tokenizer.decode(ex.input_ids) == f"[counterfactual] {QUESTION}"  # the encoder
    assert ex.decoder_input_ids[0] == start and len(ex.decoder_input_ids) == len(ex.labels)
    answer = tokenizer.encode(" roof", add_special_tokens=False)
    assert ex.learned == [*answer, tokenizer.eos_token_id]
    # The decoder is forced through the rationale (in its inputs), which is never learned.
    given = len(ex.labels) - len(ex.learned)
    assert set(ex.labels[:given]) == {IGNORE}
    assert tokenizer.decode(_target(ex)[:given]) == (
        "[counterfactual] Forks sit on the roof. So the answer is"
    )
    assert ex.labels[given:] == _target(ex)[given:]


def test_a_factual_row_learns_its_whole_target_from_the_decoders_start(
    tokenizer: Any, start: int
) -> None:
    factual = make_record("c0", "Forks go in a drawer.", answer="drawer", **MC)  # type: ignore[arg-type]
    for objective, target in (
        ("scott", "[factual] Forks go in a drawer. So the answer is drawer"),
        ("answer", "[factual] So the answer is drawer"),
    ):
        ex = encode(tokenizer, factual, objective, decoder_start=start)  # type: ignore[arg-type]
        assert ex is not None and ex.decoder_input_ids is not None
        assert tokenizer.decode(ex.input_ids) == f"[factual] {QUESTION}"
        assert ex.labels == _target(ex) and ex.labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ex.labels[:-1]) == target, objective


def test_the_seq2seq_loss_is_not_shifted() -> None:
    # One row: logits at position t must predict the label at t (a shift would score the
    # wrong pairs and give ln 4 here instead of ~0).
    logits = torch.full((1, 2, 4), -100.0)
    logits[0, 0, 2] = logits[0, 1, 3] = 100.0
    labels = torch.tensor([[2, 3]])
    kind = torch.tensor([False])
    assert weighted_loss(logits, labels, kind, 0.5, shift=False).item() == pytest.approx(0.0)
    assert weighted_loss(logits, labels, kind, 0.5, shift=True).item() > 100


def test_the_collated_decoder_inputs_keep_the_masked_rationale(tokenizer: Any, start: int) -> None:
    rows = [encode(tokenizer, r, "scott", decoder_start=start) for r in _records(2)]
    examples = [e for e in rows if e is not None]
    from contrail.distill.student.train import _Rows

    batch = collate(tokenizer.pad_token_id)([_Rows(examples)[i] for i in range(len(examples))])
    for i, ex in enumerate(examples):
        n = len(ex.decoder_input_ids or ())
        assert batch["decoder_input_ids"][i, :n].tolist() == ex.decoder_input_ids
        assert batch["labels"][i, :n].tolist() == ex.labels
        assert set(batch["labels"][i, n:].tolist()) <= {IGNORE}  # padding is never learned
        assert batch["decoder_attention_mask"][i].sum() == n
    assert batch["kind"].any() and not batch["kind"].all()


def test_a_seq2seq_student_trains_and_every_metric_runs(
    tiny_seq2seq_path: Path, tmp_path: Path, tokenizer: Any, start: int
) -> None:
    from transformers import AutoModelForSeq2SeqLM

    from contrail.distill.student.evaluate import evaluate
    from contrail.distill.student.examples import build_examples, split_records
    from contrail.distill.student.hf import HFStudent
    from contrail.distill.student.loading import is_seq2seq

    records = _records(24)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(r.model_dump_json() + "\n" for r in records))
    parts = split_records(records, dev_fraction=0.25, seed=0)
    examples = build_examples(
        parts["train"], tokenizer, "scott", max_tokens=256, decoder_start=start
    ).examples
    pad = tokenizer.pad_token_id
    before = mean_loss(AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_path), examples, pad)

    config = TrainConfig(
        model=str(tiny_seq2seq_path), objective="scott", learning_rate=3e-3, batch_size=8,
        epochs=3, dev_fraction=0.25, max_tokens=256, patience=3,
    )  # fmt: skip
    report = train(dataset, tmp_path / "run", config)

    model_dir = tmp_path / "run" / "model"
    assert is_seq2seq(model_dir)
    after = mean_loss(AutoModelForSeq2SeqLM.from_pretrained(model_dir), examples, pad)
    assert after < 0.8 * before, (before, after)
    assert report.examples["train"]["counterfactual"] > 0 and report.tokens_per_second > 0

    student = HFStudent(model_dir, max_new_tokens=12)
    result = evaluate(student, parts["dev"], name="t5", reps=50)
    assert result.items == len({r.item_id for r in parts["dev"]})
    assert all(r.own is not None and r.perturbed is not None for r in result.results)
    assert any(r.following is not None for r in result.results)
    json.loads(result.model_dump_json())


def test_seq2seq_option_scores_equal_the_models_own_label_path(tiny_seq2seq_path: Path) -> None:
    """`HFStudent` builds the decoder's inputs itself; transformers' `labels=` path (its own
    shift from the start token) must give the same log-probabilities."""
    from transformers import AutoModelForSeq2SeqLM

    from contrail.distill.student.hf import HFStudent

    student = HFStudent(tiny_seq2seq_path, batch_size=2)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_path).eval()
    tok = student.tokenizer
    prompt, opts = f"[factual] {QUESTION}", CHOICES
    cont = "[factual] It is kept low. So the answer is"
    rows = [(prompt, cont, [*tok.encode(f" {o}", add_special_tokens=False), tok.eos_token_id])
            for o in opts]  # fmt: skip
    got = student._score_seq2seq(rows)
    for (_, _, option), score in zip(rows, got, strict=True):
        given = tok.encode(cont, add_special_tokens=False)
        target = torch.tensor([given + option])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok.encode(prompt)]), labels=target).logits
        logp = torch.log_softmax(logits.float(), dim=-1)[0]
        want = sum(float(logp[t, target[0, t]]) for t in range(len(given), target.shape[1]))
        assert score == pytest.approx(want, abs=1e-4)
    pick = student.choose([prompt], [cont], [opts])
    assert pick == [max(range(3), key=got.__getitem__)]


def test_lora_on_a_seq2seq_student_saves_a_merged_seq2seq_model(
    tiny_seq2seq_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSeq2SeqLM

    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(r.model_dump_json() + "\n" for r in _records(12)))
    config = TrainConfig(
        model=str(tiny_seq2seq_path), objective="scott", learning_rate=1e-2, batch_size=8,
        epochs=1, dev_fraction=0.25, max_tokens=256, lora_r=4,
    )  # fmt: skip
    train(dataset, tmp_path / "run", config)
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_seq2seq_path).state_dict()
    assert set(merged) == set(base)  # no adapter weights left: a plain T5
    changed = {n for n in merged if not torch.equal(merged[n], base[n])}
    assert changed and all(n.endswith((".q.weight", ".v.weight")) for n in changed), changed
