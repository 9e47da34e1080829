"""`contrail.distill.student.train` on the tiny model: training lowers the loss, the run folder
holds what it promises, the weighted loss weighs the kinds, and a run resumes from its last
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contrail.distill.student.train import TrainConfig, mean_loss, train, weighted_loss
from tests.test_export_adapters import _records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("student") / "data.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in _records(24)))
    return path


def test_training_lowers_the_loss_and_writes_the_run_folder(
    dataset: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contrail.distill.export import load_records
    from contrail.distill.student.examples import build_examples, split_records

    config = TrainConfig(
        model=str(tiny_model_path), objective="scott", learning_rate=3e-3, batch_size=8,
        epochs=4, dev_fraction=0.25, max_tokens=256, patience=4,
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    train_recs = split_records(load_records(dataset), dev_fraction=0.25, seed=0)["train"]
    examples = build_examples(train_recs, tok, "scott", max_tokens=256).examples
    assert {e.kind for e in examples} == {"factual", "counterfactual"}
    before = mean_loss(AutoModelForCausalLM.from_pretrained(tiny_model_path), examples, 0)

    report = train(dataset, tmp_path / "run", config)

    after = mean_loss(AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model"), examples, 0)
    assert after < 0.8 * before, (before, after)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["config"]["objective"] == "scott"
    assert saved["examples"]["train"]["counterfactual"] > 0
    assert saved["items"]["train"] + saved["items"]["dev"] == 48
    assert saved["teachers"] and saved["dataset_sha256"] == report.dataset_sha256
    assert report.epochs_run == 4 and report.tokens_per_second > 0
    assert report.best_dev_loss is not None and report.best_dev_loss < before
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "config.json").read_text())["alpha"] == 0.5

    # Resume: a longer run picks up the last checkpoint instead of starting over.
    longer = config.model_copy(update={"epochs": 5})
    resumed = train(dataset, tmp_path / "run", longer, resume=True)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith(
        "checkpoint-24"
    )  # 6 steps an epoch
    assert resumed.epochs_run == 5


def test_the_loss_weighs_the_two_kinds() -> None:
    # Two rows, each learning one token: the factual row's CE is ln 2, the counterfactual's 0.
    logits = torch.zeros((2, 2, 4))
    logits[1, 0, 3] = 100.0  # the counterfactual row predicts its label with certainty
    labels = torch.tensor([[-100, 1], [-100, 3]])
    logits[0, 0, :2] = 10.0  # the factual row splits between tokens 0 and 1
    kind = torch.tensor([False, True])
    ln2 = torch.log(torch.tensor(2.0)).item()
    assert weighted_loss(logits, labels, kind, 0.5).item() == pytest.approx(0.5 * ln2, abs=1e-4)
    assert weighted_loss(logits, labels, kind, 0.0).item() == pytest.approx(ln2, abs=1e-4)
    assert weighted_loss(logits, labels, kind, 1.0).item() == pytest.approx(0.0, abs=1e-4)
    # Without counterfactual rows the loss is the factual CE, whatever a is.
    only = torch.tensor([False, False])
    assert weighted_loss(logits[:1], labels[:1], only[:1], 0.5).item() == pytest.approx(
        ln2, abs=1e-4
    )


def test_contrail_train_runs_from_the_command_line(
    dataset: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "contrail.client.cli", "train", str(dataset)]
    cmd += ["--out-dir", str(tmp_path / "run"), "--model", str(tiny_model_path)]
    cmd += ["--objective", "factual", "--epochs", "1", "--batch-size", "8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # stdout also has the Trainer's log lines; the report is its last JSON and the run's file.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert done.stdout.rstrip().endswith("}") and '"objective": "factual"' in done.stdout
    assert report["config"]["objective"] == "factual"
    assert report["examples"]["train"] == {"factual": report["examples"]["train"]["factual"]}
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    # ... then evaluated on the items it held out.
    scores = tmp_path / "eval.json"
    cmd_eval = [sys.executable, "-m", "contrail.client.cli", "eval-student", str(dataset)]
    cmd_eval += ["--student", f"tiny={tmp_path / 'run' / 'model'}", "--no-las"]
    cmd_eval += ["--max-new-tokens", "8", "--bootstrap", "50", "--json", str(scores)]
    evaluated = subprocess.run(cmd_eval, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.startswith("| student | accuracy |")
    payload = json.loads(scores.read_text())
    (ev,) = payload["evaluations"]
    assert ev["student"] == "tiny" and ev["items"] == report["items"]["dev"]
    assert set(ev["metrics"]) == {"accuracy", "own", "oracle", "perturbed", "drop", "following"}
    assert ev["las"] is None and ev["simulator_validation"] is None  # --no-las
    # A bad setting is a usage error naming it, not a traceback.
    bad = subprocess.run(
        [*cmd[:5], "--out-dir", str(tmp_path / "bad"), "--alpha", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "alpha" in bad.stderr, bad.stderr[-2000:]
    missing = subprocess.run(
        [*cmd[:4], str(tmp_path / "none.jsonl"), "--out-dir", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "no such dataset file" in missing.stderr


def test_lora_training_saves_a_merged_model(
    dataset: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    config = TrainConfig(
        model=str(tiny_model_path), objective="factual", learning_rate=1e-2, batch_size=8,
        epochs=1, dev_fraction=0.25, max_tokens=256, lora_r=4,
    )  # fmt: skip
    train(dataset, tmp_path / "run", config)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    names = set(merged.state_dict())
    assert names == set(base.state_dict())  # no adapter weights left: a plain model
    changed = [n for n in names if not torch.equal(merged.state_dict()[n], base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # LoRA touched the attention only


def test_training_on_the_student_export_learns_what_the_dataset_teaches(
    dataset: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    from contrail.distill.export import export_student, load_records

    # The export's own split (another fraction and seed) is not the run's: the run splits by
    # item again, so eval-student with the run's settings finds the items it held out.
    export_student(load_records(dataset), tmp_path / "export", dev_fraction=0.5, seed=3)
    config = TrainConfig(
        model=str(tiny_model_path), objective="scott", batch_size=8, epochs=1,
        dev_fraction=0.25, max_tokens=256,
    )  # fmt: skip
    from_export = train(tmp_path / "export", tmp_path / "a", config)
    from_dataset = train(dataset, tmp_path / "b", config)
    assert (from_export.source, from_dataset.source) == ("export", "dataset")
    assert from_export.items == from_dataset.items
    assert from_export.examples == from_dataset.examples
    assert from_export.records == from_dataset.records
    # What made the rows travels with the export: every teacher and decoding setting, in full.
    assert from_export.decoding_settings == from_dataset.decoding_settings
    (used,) = from_dataset.decoding_settings
    assert used.records == from_dataset.records and used.decoding.max_new_tokens > 0
    assert from_export.teachers == from_dataset.teachers == [used.model]
    # The rows come in the dataset's order, so the same seed trains the same model.
    assert from_export.best_dev_loss == from_dataset.best_dev_loss
    assert from_export.final_train_loss == from_dataset.final_train_loss
    with pytest.raises(ValueError, match="not a student export"):
        train(tmp_path / "b", tmp_path / "c", config)  # a run folder, not an export
    (tmp_path / "export" / "train.jsonl").unlink()
    with pytest.raises(ValueError, match=r"lists train\.jsonl, which is missing"):
        train(tmp_path / "export", tmp_path / "d", config)
