"""The dataset writer's Parquet half: Arrow's JSON reader stands in for json.loads +
Table.from_pylist (the merge's hot path), and must build exactly the same table."""

from __future__ import annotations

import json

import pyarrow as pa

from contrail.core.dataset_schema import RECORD_SCHEMA
from contrail.worker.generation.dataset_writer import batch_table


def test_arrows_json_reader_builds_the_same_table_as_python_did() -> None:
    """DatasetWriter parses a batch's JSON lines with Arrow's reader; the table must equal the
    one json.loads + Table.from_pylist built (nulls, unicode, floats, empty and missing lists)."""

    def record(i: int) -> dict[str, object]:
        return {
            "item_id": f"q{i}",
            "task": "generic",
            "question": f'Is {i} \u00e9ven? \u2028 "quoted" \\ back\nslash',
            "choices": None if i % 3 == 0 else [] if i % 3 == 1 else ["yes", "no", "\U0001f600"],
            "gold_answer": "yes",
            "answer": "no" if i % 2 else "yes",
            "tag": "counterfactual" if i % 2 else "factual",
            "rationale": "" if i == 5 else f"r{i} " * (i % 7),
            "decoding": {
                "mode": "contrastive",
                "perturbation": "wrong",
                "contrast_answer": None if i % 2 else "maybe",
                "lambda": 0.1 * i,
                "alpha": 0,
                "temperature": 1.0 / 3,
                "max_new_tokens": 64,
                "seed": None if i % 4 else 2**40 + i,
            },
            "model": "m",
            "finish_reason": "stop",
            "prompt_tokens": i,
            "completion_tokens": 2 * i,
            "continuations": 0,
            "error": None if i % 5 else "lockstep",
        }

    lines = [json.dumps(record(i), ensure_ascii=i % 2 == 0) for i in range(40)]
    want = pa.Table.from_pylist([json.loads(line) for line in lines], RECORD_SCHEMA)
    got = batch_table(lines)
    assert got.schema.equals(RECORD_SCHEMA)
    assert got.equals(want)
