"""Arrow schemas of a rationale dataset and of its per-item errors.

One schema for every dataset contrail writes (offline `generate`, job finalization) and reads (the
API's viewer pages through stored shards and the merged Parquet), so each loads the same way.
"""

from __future__ import annotations

import pyarrow as pa

DECODING_SCHEMA = pa.struct(
    [
        ("mode", pa.string()),
        ("perturbation", pa.string()),
        ("contrast_answer", pa.string()),
        ("lambda", pa.float64()),
        ("alpha", pa.float64()),
        ("temperature", pa.float64()),
        ("max_new_tokens", pa.int64()),
        ("seed", pa.int64()),
    ]
)

RECORD_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("task", pa.string()),
        ("question", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("gold_answer", pa.string()),
        ("answer", pa.string()),
        ("tag", pa.string()),
        ("rationale", pa.string()),
        ("decoding", DECODING_SCHEMA),
        ("model", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("continuations", pa.int64()),
        ("error", pa.string()),
    ]
)

# `ItemError` (contrail.client.types) as Arrow.
ERROR_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("line", pa.int64()),
        ("field", pa.string()),
        ("code", pa.string()),
        ("message", pa.string()),
    ]
)
