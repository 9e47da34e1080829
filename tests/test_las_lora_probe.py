"""bench/las_lora_probe.py: the LoRA-tuned reader computes what the full model computes before
training, and the probe trains and validates end to end (tiny model, a few training records)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from tests.research_data import DATA

PROMPTS = [
    "Q: Could a cat fit inside a teapot?\nA: The answer is",
    "Q: Is the sun a star?\nExplanation: The sun is a G-type main-sequence star.\nA: The answer is",
    "Explanation: Penguins cannot fly.\nA: The answer is",
]


def test_reader_before_training_gives_the_full_models_option_logits(tiny_model_path: Path) -> None:
    """Frozen lower blocks (states cached in float16, right-padded batches) + the upper blocks
    with fresh (zero) LoRA adapters + the option head = the full LM's logits for the options."""
    from transformers import AutoModelForCausalLM

    from bench.las_lora_probe import LoraReader

    args = argparse.Namespace(
        model=str(tiny_model_path),
        split_layer=1,
        rank=4,
        lr=1e-3,
        batch=2,
        epochs=1,
        task="x",
        seed=0,
    )
    reader = LoraReader(args, ("yes", "no"))
    reader.read(PROMPTS)
    reader.upper.eval()
    with torch.inference_mode():
        got = reader.upper(*reader._batch(PROMPTS))

    lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32).eval()
    option_ids = [reader.ids(" yes")[0], reader.ids(" no")[0]]
    with torch.inference_mode():
        want = torch.stack(
            [lm(torch.tensor([reader.ids(p)])).logits[0, -1, option_ids] for p in PROMPTS]
        )
    assert got.shape == (len(PROMPTS), 2)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2 * float(want.abs().max()))


@pytest.mark.slow
def test_probe_trains_and_validates_every_epoch(tiny_model_path: Path, tmp_path: Path) -> None:
    from bench.las_lora_probe import main

    out = tmp_path / "lora.json"
    cache = tmp_path / "states.pt"
    argv = [
        "--task", "StrategyQA", "--model", str(tiny_model_path), "--split-layer", "1",
        "--rank", "4", "--train-limit", "24", "--epochs", "2", "--bootstrap", "20",
        "--threads", "1", "--states-cache", str(cache), "--out", str(out),
        "--data-dir", str(DATA),
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert [e["epoch"] for e in result["epochs"]] == [0, 1, 2]
    assert result["epochs"][0]["train_loss"] is None
    assert all(math.isfinite(e["train_loss"]) for e in result["epochs"][1:])
    for e in result["epochs"]:
        # Every dev item is scored in every condition, human and shuffled, and judged.
        assert e["human"]["scored"] == e["shuffled"]["scored"] == e["human"]["records"] > 200
        assert set(e["passes"]) == {"las_above_shuffled", "acc_qr_above_acc_q"}
        info = e["human"]["simulator_info"]
        assert info["train_records"] == 24 and info["kind"] == "trained"
    assert result["epochs"][-1]["human"]["simulator_info"]["head"].endswith("epoch 2")
    # The frozen states were kept: the 24 training records' three prompts and the dev prompts.
    assert len(torch.load(cache)) >= 3 * 24
