"""The student export in training tools' formats (contrail.distill.adapters): each row says what
the method trains on, and each file loads in its library: TRL's SFTTrainer (tokenized with the
tiny model: a counterfactual row learns exactly its answer and the end-of-text token),
Hugging Face datasets for all of them, LLaMA-Factory's dataset_info entries."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from contrail.client.types import RationaleRecord, Tag, TaskName
from contrail.distill.adapters import (
    alpaca_row,
    axolotl_row,
    native_row,
    prompt_completion,
    trl_row,
)
from contrail.distill.export import export_student, split_of
from tests.test_evaluation import make_record

CSQA = {"task": TaskName.CSQA, "question": "Where is a fork kept?", "gold": "drawer"}
CHOICES = ["drawer", "garage", "roof"]


def _records(n: int = 12) -> list[RationaleRecord]:
    """n CSQA items (factual, and a counterfactual for every other one) and n CREAK claims, each
    with a question of its own."""
    out = []
    for i in range(n):
        mc = {"task": TaskName.CSQA, "choices": CHOICES, "question": f"Where is fork {i} kept?"}
        out.append(make_record(f"c{i}", f"Forks go in drawer {i}.", answer="drawer", **mc))  # type: ignore[arg-type]
        if i % 2 == 0:
            out.append(
                make_record(
                    f"c{i}", f"Forks sit on the roof {i}.", answer="roof", gold="drawer",
                    tag=Tag.COUNTERFACTUAL, contrast="drawer", **mc,  # type: ignore[arg-type]
                )
            )  # fmt: skip
        out.append(
            make_record(
                f"k{i}", f"Soup is liquid {i}.", question=f"Soup {i} is a solid.",
                answer="false", task=TaskName.CREAK, contrast="true",
            )
        )  # fmt: skip
    return out


def test_rows_say_what_is_learned() -> None:
    factual = make_record("c0", "Forks go  in\na drawer.", answer="drawer", choices=CHOICES, **CSQA)  # type: ignore[arg-type]
    counter = make_record(
        "c0", "Forks sit on the roof.", answer="roof", choices=CHOICES, tag=Tag.COUNTERFACTUAL,
        contrast="drawer", **CSQA,  # type: ignore[arg-type]
    )  # fmt: skip
    question = "[factual] Where is a fork kept? \\n (A) drawer (B) garage (C) roof\n"
    assert prompt_completion(factual) == (
        question,
        "[factual] Forks go in a drawer. So the answer is drawer",
    )
    # Counterfactual: the rationale is given, only the answer is learned.
    assert prompt_completion(counter) == (
        "[counterfactual] Where is a fork kept? \\n (A) drawer (B) garage (C) roof\n"
        "[counterfactual] Forks sit on the roof. So the answer is",
        " roof",
    )
    assert trl_row(counter) == dict(
        zip(("prompt", "completion"), prompt_completion(counter), strict=True)
    )
    assert axolotl_row(counter)["segments"] == [
        {"label": False, "text": prompt_completion(counter)[0]},
        {"label": True, "text": " roof"},
    ]
    assert alpaca_row(counter)["output"] == "roof"
    assert alpaca_row(factual) == {
        "instruction": question.rstrip("\n"),
        "input": "",
        "output": "[factual] Forks go in a drawer. So the answer is drawer",
    }
    # The reference release's lines: choices as one string for multiple choice, `statement`
    # and no choices for a claim (binary tasks have none there).
    assert native_row(counter) == {
        "id": "c0",
        "question": "Where is a fork kept?",
        "choices": "(A) drawer (B) garage (C) roof",
        "explanation": "Forks sit on the roof.",
        "answer": "roof",
    }
    claim = make_record(
        "k0", "Soup is liquid.", question="Soup is a solid.", answer="false", task=TaskName.CREAK
    )
    assert native_row(claim) == {
        "id": "k0",
        "statement": "Soup is a solid.",
        "explanation": "Soup is liquid.",
        "answer": "false",
    }


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_format_is_written_and_loads_in_datasets(tmp_path: Path) -> None:
    import datasets

    records = _records()
    summary = export_student(records, tmp_path, dev_fraction=0.3, seed=1)
    for fmt in ("trl", "axolotl", "llamafactory"):
        for split in ("train", "dev"):
            path = tmp_path / fmt / f"{split}.jsonl"
            want = [r for r in records if split_of(r.item_id, 0.3, 1) == split]
            assert len(_jsonl(path)) == len(want) > 0, (fmt, split)
            assert summary.files[f"{fmt}/{split}.jsonl"] == str(path)
            loaded = datasets.load_dataset(
                "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
            )
            assert loaded.num_rows == len(want)
    native = tmp_path / "native"
    train = [r for r in records if split_of(r.item_id, 0.3, 1) == "train"]
    assert [r["id"] for r in _jsonl(native / "train.jsonl")] == [
        r.item_id for r in train if r.tag is Tag.FACTUAL
    ]
    counterfactual = _jsonl(native / "train.counterfactual.jsonl")
    assert counterfactual and all(r["answer"] == "roof" for r in counterfactual)
    assert all(r["answer"] in ("drawer", "false") for r in _jsonl(native / "dev.jsonl"))
    # LLaMA-Factory's registry names each file with the alpaca columns its rows have.
    info = json.loads((tmp_path / "llamafactory" / "dataset_info.json").read_text())
    for entry in info.values():
        rows = _jsonl(tmp_path / "llamafactory" / entry["file_name"])
        assert entry["formatting"] == "alpaca"
        assert set(entry["columns"].values()) == set(rows[0])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["formats"] == ["trl", "axolotl", "llamafactory", "native"]


def test_an_items_rows_stay_in_one_split_in_every_format(tmp_path: Path) -> None:
    export_student(_records(), tmp_path, dev_fraction=0.5, seed=3)
    where: dict[str, set[str]] = defaultdict(set)
    for split in ("train", "dev"):
        for row in _jsonl(tmp_path / "axolotl" / f"{split}.jsonl"):
            item = row["segments"][0]["text"].split("\\n")[0]  # its question names the item
            where[item.removeprefix("[factual] ").removeprefix("[counterfactual] ")].add(split)
    assert len(where) == 24 and all(len(s) == 1 for s in where.values()), where
    assert {s for splits in where.values() for s in splits} == {"train", "dev"}


def test_formats_can_be_chosen_and_old_ones_go(tmp_path: Path) -> None:
    export_student(_records(), tmp_path)
    assert (tmp_path / "native").is_dir()
    export_student(_records(), tmp_path, formats=["trl"])
    assert (tmp_path / "trl").is_dir() and not (tmp_path / "native").exists()
    with pytest.raises(ValueError, match="unknown export formats"):
        export_student(_records(), tmp_path, formats=["alpaca"])


def test_trl_learns_a_counterfactual_rows_answer_only(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    records = _records(4)
    export_student(records, tmp_path / "export", dev_fraction=0.0)
    path = tmp_path / "export" / "trl" / "train.jsonl"
    rows = _jsonl(path)
    ds = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    config = SFTConfig(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2,
        report_to=[], use_cpu=True, save_strategy="no",
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tokenizer)
    eos = tokenizer.eos_token
    for row, tokenized in zip(rows, trainer.train_dataset, strict=True):
        learned = [
            t
            for t, label in zip(tokenized["input_ids"], tokenized["labels"], strict=True)
            if label != -100
        ]
        assert tokenizer.decode(learned) == row["completion"] + eos, row
    assert any(r["completion"] == " roof" for r in rows)  # the counterfactual rows are there
    assert trainer.train().training_loss > 0
