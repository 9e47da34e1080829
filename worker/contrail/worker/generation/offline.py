"""The offline `contrail generate`: an input file in, a rationale dataset (JSONL + Parquet) out.

No server, queue or storage: load and validate the items, plan the prompts, decode in batches with
a progress bar, and stream records to disk as batches finish.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm

from contrail.client.jobs import DEFAULT_MODEL
from contrail.client.types import DecodingSettings, Demonstration, ItemError, TaskName
from contrail.core.tasks.formats import load_items
from contrail.worker.engine.base import Engine
from contrail.worker.engine.factory import EngineKind, create_engine
from contrail.worker.generation import pipeline
from contrail.worker.generation.dataset_writer import DatasetWriter


class GenerateSummary(BaseModel):
    """What `generate` did; printed by the CLI and returned to Python callers."""

    input_path: str
    dataset_path: str
    parquet_path: str | None
    errors_path: str
    model: str
    items: int
    records: int
    errors: int
    completion_tokens: int
    decode_seconds: float
    rationales_per_second: float
    pairs_continued: int


def run_generate(
    input_path: Path,
    output_path: Path,
    task: TaskName,
    settings: DecodingSettings,
    *,
    fmt: str | None = None,
    model: str = DEFAULT_MODEL,
    engine: EngineKind | Engine = "auto",
    demonstrations: Sequence[Demonstration] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    parquet: bool = True,
    progress: bool = True,
) -> GenerateSummary:
    loaded = load_items(input_path, task, fmt)
    items = loaded.items[:limit] if limit is not None else loaded.items
    decoder = engine if isinstance(engine, Engine) else create_engine(engine, model)
    job = pipeline.plan(
        items, task, settings, decoder.model_name, demonstrations, None, decoder.max_prompt_chars
    )
    start = time.perf_counter()
    tokens = 0
    with DatasetWriter(output_path, parquet=parquet) as writer:
        for error in [*loaded.errors, *job.errors]:
            writer.write(error)
        with tqdm(total=len(job.requests), unit="rationale", disable=not progress) as bar:
            for first in range(0, len(job.requests), batch_size):
                batch = job.requests[first : first + batch_size]
                for out in pipeline.decode_batch(decoder, job, batch):
                    writer.write(out)
                    if not isinstance(out, ItemError):
                        tokens += out.completion_tokens
                bar.update(len(batch))
    elapsed = time.perf_counter() - start
    return GenerateSummary(
        input_path=str(input_path),
        dataset_path=str(writer.jsonl_path),
        parquet_path=str(writer.parquet_path) if writer.parquet_path else None,
        errors_path=str(writer.errors_path),
        model=decoder.model_name,
        items=len(items),
        records=writer.records,
        errors=writer.errors,
        completion_tokens=tokens,
        decode_seconds=round(elapsed, 3),
        rationales_per_second=round(writer.records / elapsed, 3) if elapsed > 0 else 0.0,
        pairs_continued=decoder.stats.pairs_continued,
    )
