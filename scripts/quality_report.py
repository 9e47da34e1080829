"""Generate StrategyQA and CREAK dev datasets in three decoding modes with the default teacher
(factual and counterfactual rationales), evaluate them with contrail's evaluator (the trained
LAS simulator by default), and write the numbers, tables and chart of docs/quality/REPORT.md.

    nice -n 10 .venv/bin/python scripts/quality_report.py                 # everything
    nice -n 10 .venv/bin/python scripts/quality_report.py --skip-generate # re-evaluate runs/quality
    ... --skip-generate --simulator-kind zero-shot --report-dir runs/q0   # the zero-shot simulator

Datasets go to runs/quality/ (ignored by git); docs/quality/ gets quality.json (every number),
quality.png (the chart) and tables.md (the tables REPORT.md quotes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from contrail.client.types import DecodingMode, DecodingSettings, Perturbation, TaskName
from contrail.distill.export import load_records
from contrail.distill.las import (
    Calibration,
    LikelihoodSimulator,
    RecordSimulator,
    SimulatedRecord,
    Simulator,
    las_from_simulated,
    paired_difference,
)
from contrail.distill.report import (
    ComparisonRow,
    QualitySummary,
    comparison_chart,
    comparison_table,
    simulator_notes,
    summarize_with_predictions,
)
from contrail.distill.simulators import (
    DEFAULT_FOLDS,
    DEFAULT_LAYER,
    TRAININGS,
    HiddenStateEncoder,
    TrainedSimulator,
    Training,
)

ROOT = Path(__file__).resolve().parents[1]
# The full research splits: a data folder beside the checkout (the tests carry their own copies).
DATA = ROOT.parent / "shared" / "data"
TASKS: dict[str, tuple[TaskName, Path]] = {
    "StrategyQA": (TaskName.STRATEGYQA, DATA / "strategyqa" / "dev.json"),
    "CREAK": (TaskName.CREAK, DATA / "creak" / "dev.json"),
}
MODES: dict[str, tuple[DecodingMode, Perturbation]] = {
    "greedy": (DecodingMode.GREEDY, Perturbation.WRONG),
    "contrastive-empty": (DecodingMode.CONTRASTIVE, Perturbation.EMPTY),
    "contrastive-wrong": (DecodingMode.CONTRASTIVE, Perturbation.WRONG),
}


_SIMULATOR: Simulator | RecordSimulator | None = None


def _init_evaluator(
    model: str,
    kind: str,
    layer: int,
    folds: int,
    seed: int,
    threads: int,
    training: Training = "auto",
    store: Path | None = None,
) -> None:
    """Runs in the evaluation process: one simulator for all datasets (its feature or score
    cache then serves the question-only condition of every mode from one computation)."""
    global _SIMULATOR
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    if kind == "zero-shot":
        _SIMULATOR = LikelihoodSimulator(model)
    else:
        encoder = HiddenStateEncoder(model, layer=layer, store=store)
        _SIMULATOR = TrainedSimulator(encoder=encoder, folds=folds, seed=seed, training=training)


def _evaluate(
    path: str, calibration: Calibration, reps: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    assert _SIMULATOR is not None
    records = load_records(Path(path))
    summary, sims = summarize_with_predictions(
        records, _SIMULATOR, calibration=calibration, bootstrap_reps=reps, seed=seed
    )
    return summary.model_dump(mode="json"), [s.model_dump() for s in sims]


def _portable(value: Any) -> Any:
    """Paths relative to the repository (the JSON is committed), other values as they are."""
    if isinstance(value, Path):
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    return value


GENERATION_OPTIONS = (
    "strategyqa_limit",
    "creak_limit",
    "max_new_tokens",
    "counterfactual_fraction",
    "engine",
    "model",
    "seed",
    "batch_size",
)


def dataset_path(out_dir: Path, task: str, mode: str) -> Path:
    return out_dir / f"{task.lower()}-{mode}.jsonl"


def generate(
    args: argparse.Namespace,
    limits: dict[str, int],
    on_done: Callable[[str, str], None],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    from contrail.worker.engine.factory import create_engine
    from contrail.worker.generation.offline import run_generate

    start = time.perf_counter()
    engine = create_engine(args.engine, args.model)
    runs: dict[str, Any] = {
        # Kept with the datasets, so that a later --skip-generate run reports what made them (and
        # their decode timings): these options, threads and commit, not its own unused ones.
        "generated_with": {
            **{name: vars(args)[name] for name in GENERATION_OPTIONS},
            "threads": args.threads,
            "provenance": provenance,
        },
        "engine_load_seconds": round(time.perf_counter() - start, 1),
    }
    for task, (task_name, path) in TASKS.items():
        for mode, (decoding, perturbation) in MODES.items():
            settings = DecodingSettings(
                mode=decoding,
                perturbation=perturbation,
                max_new_tokens=args.max_new_tokens,
                seed=args.seed,
                counterfactual_fraction=args.counterfactual_fraction,
            )
            summary = run_generate(
                path,
                dataset_path(args.out_dir, task, mode),
                task_name,
                settings,
                engine=engine,
                limit=limits[task],
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
            runs[f"{task}/{mode}"] = summary.model_dump()
            on_done(task, mode)
            print(
                f"{task}/{mode}: {summary.records} records in {summary.decode_seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--strategyqa-limit", type=int, default=229, help="first N dev items (229)")
    p.add_argument("--creak-limit", type=int, default=300, help="first N dev items (300)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--counterfactual-fraction",
        type=float,
        default=1.0,
        help="share of items that also get a counterfactual rationale (1.0: every item)",
    )
    p.add_argument("--engine", choices=["vllm", "reference", "auto"], default="vllm")
    p.add_argument("--model", default="smollm2-135m", help="teacher")
    p.add_argument("--simulator", default="smollm2-135m", help="LAS simulator's language model")
    p.add_argument("--simulator-kind", choices=["trained", "zero-shot"], default="trained")
    p.add_argument("--simulator-layer", type=int, default=DEFAULT_LAYER)
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    p.add_argument(
        "--simulator-training",
        choices=TRAININGS,
        default="auto",
        help="trained simulator: the committed head of the task (auto, head) or cross-fit",
    )
    p.add_argument("--feature-store", type=Path, default=None, help="SQLite cache of states")
    p.add_argument("--calibration", choices=["batch", "none"], default="batch")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--report-dir", type=Path, default=ROOT / "docs" / "quality")
    p.add_argument(
        "--skip-generate",
        action="store_true",
        help="evaluate existing datasets (quality.json then records the generation options\n"
        "that made them in generation.generated_with)",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for vLLM and the simulator (default 1: on a shared machine a bound\n"
        "multi-threaded OpenMP pool stalls on every barrier; 0 = library defaults)",
    )
    args = p.parse_args(argv)
    if args.threads > 0:
        # Must happen before vLLM / torch start their thread pools.
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        bind = "0" if args.threads == 1 else f"0-{args.threads - 1}"
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
        import torch

        torch.set_num_threads(args.threads)
    limits = {"StrategyQA": args.strategyqa_limit, "CREAK": args.creak_limit}
    missing = [str(path) for _, path in TASKS.values() if not path.is_file()]
    if missing and not args.skip_generate:
        raise SystemExit(
            f"research data missing: {', '.join(missing)} (a data folder beside the checkout)"
        )
    sys.path.insert(0, str(ROOT))
    from bench.provenance import git_sha

    # Taken first: a checkout edited while the run goes on cannot pass for the one measured.
    provenance = git_sha()

    # Evaluation runs in a second process, each dataset as soon as it is written, so the
    # simulator (one core) overlaps with the teacher (the other core).
    start = time.perf_counter()
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_evaluator,
        initargs=(
            args.simulator,
            args.simulator_kind,
            args.simulator_layer,
            args.folds,
            args.seed,
            args.threads,
            args.simulator_training,
            args.feature_store,
        ),
    )
    futures: dict[tuple[str, str], Future[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}

    def submit(task: str, mode: str) -> None:
        path = str(dataset_path(args.out_dir, task, mode))
        futures[(task, mode)] = pool.submit(
            _evaluate, path, args.calibration, args.bootstrap, args.seed
        )

    runs_file = args.out_dir / "generation.json"
    if args.skip_generate:
        runs = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
        if "generated_with" not in runs:
            print(
                f"warning: {runs_file} does not say how the datasets were made (older script or "
                "none): quality.json's generation section cannot either",
                file=sys.stderr,
            )
        for task in TASKS:
            for mode in MODES:
                submit(task, mode)
    else:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        runs = generate(args, limits, submit, provenance)
        runs_file.write_text(json.dumps(runs, indent=2) + "\n")

    rows: list[ComparisonRow] = []
    per_dataset: dict[str, Any] = {}
    simulated: dict[tuple[str, str], list[SimulatedRecord]] = {}
    for (task, mode), future in futures.items():
        summary_json, sims_json = future.result()
        summary = QualitySummary.model_validate(summary_json)
        simulated[(task, mode)] = [SimulatedRecord.model_validate(x) for x in sims_json]
        rows.append((task, mode, summary))
        per_dataset[f"{task}/{mode}"] = summary_json
        print(f"evaluated {task}/{mode}", file=sys.stderr, flush=True)
    pool.shutdown()
    simulator_name = rows[0][2].las.simulator if rows and rows[0][2].las else args.simulator
    by_tag_lines = [
        "| task | mode | tag | n | LAS [95% CI] | acc Q+R % | acc Q % | acc R = leak % |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    by_tag: dict[str, Any] = {}
    for task, mode, summary in rows:
        las = summary.las
        for tag in ("factual", "counterfactual"):
            part = [x for x in simulated[(task, mode)] if x.tag == tag]
            if not part or las is None:
                continue
            res = las_from_simulated(
                part,
                simulator=las.simulator,
                calibration=las.calibration,
                records=len(part),
                skipped=0,
                reps=args.bootstrap,
                seed=args.seed,
            )
            by_tag[f"{task}/{mode}/{tag}"] = res.model_dump(mode="json")
            by_tag_lines.append(
                f"| {task} | {mode} | {tag} | {res.scored} | {res.las.value:.3f} "
                f"[{res.las.low:.3f}, {res.las.high:.3f}] | {100 * res.acc_qr.value:.1f} "
                f"| {100 * res.acc_q.value:.1f} | {100 * res.acc_r.value:.1f} |"
            )
    total_seconds = round(time.perf_counter() - start, 1)

    paired: dict[str, Any] = {}
    for task in TASKS:
        for a, b in (
            ("contrastive-wrong", "contrastive-empty"),
            ("contrastive-empty", "greedy"),
            ("contrastive-wrong", "greedy"),
        ):
            diff = paired_difference(
                simulated[(task, a)], simulated[(task, b)], reps=args.bootstrap, seed=args.seed
            )
            paired[f"{task}: {a} - {b}"] = {k: v.model_dump() for k, v in diff.items()}

    args.report_dir.mkdir(parents=True, exist_ok=True)
    comparison_chart(
        rows,
        args.report_dir / "quality.png",
        title=f"Teacher {args.model}, simulator {simulator_name} ({args.simulator_kind})",
    )
    diff_lines = [
        "| comparison (paired, same items) | LAS diff [95% CI] | acc Q+R diff | acc R diff |",
        "|---|---|---|---|",
    ]
    for name, d in paired.items():
        cells = [
            f"{d[k]['value']:+.3f} [{d[k]['low']:+.3f}, {d[k]['high']:+.3f}]"
            for k in ("las", "acc_qr", "acc_r")
        ]
        diff_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gen_lines = [
        "| dataset | records | mean new tokens | finish=length | decode s |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, run in runs.items():
        if not isinstance(run, dict) or key == "generated_with":
            continue
        records = load_records(Path(run["dataset_path"]))
        at_length = sum(r.finish_reason.value == "length" for r in records)
        gen_lines.append(
            f"| {key} | {run['records']} | {run['completion_tokens'] / max(1, run['records']):.1f}"
            f" | {at_length} | {run['decode_seconds']:.0f} |"
        )
    tables = "\n".join(
        [
            comparison_table(rows),
            "\n".join(by_tag_lines) + "\n",
            "\n".join(diff_lines) + "\n",
            "\n".join(gen_lines) + "\n",
            "Simulator per dataset:\n",
            simulator_notes(rows),
            # What tests/test_bench_docs.py reads to trace the tables to committed code.
            f"<!-- provenance: {json.dumps(provenance)} -->\n",
        ]
    )
    (args.report_dir / "tables.md").write_text(tables)
    payload = {
        "provenance": provenance,
        "settings": {k: _portable(v) for k, v in vars(args).items()},
        "simulator": simulator_name,
        "total_seconds": total_seconds,
        "generation": {
            k: (
                {kk: vv for kk, vv in v.items() if not kk.endswith("_path")}
                if isinstance(v, dict)
                else v
            )
            for k, v in runs.items()
        },
        "datasets": per_dataset,
        "las_by_tag": by_tag,
        "paired_differences": paired,
    }
    (args.report_dir / "quality.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
