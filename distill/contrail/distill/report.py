"""Rationale quality of a dataset: cheap signals, optional LAS, comparison reports, and the
`eval` / `export` command lines.

    from contrail.distill.report import summarize, TrainedSimulator, LikelihoodSimulator
    summary = summarize(records)                                  # cheap signals only
    summary = summarize(records, simulator=TrainedSimulator())    # + LAS (loads a model)
    summary = summarize(records, simulator=LikelihoodSimulator()) # zero-shot LAS

`QualitySummary` is JSON-ready (pydantic). A job's manifest gets its quality from the finalizer
instead (`contrail.worker.consumer.finalize`: signal totals summed shard by shard, and LAS through
`contrail.worker.consumer.job_quality` when the job asks for it), so that it never reads a whole
dataset at once. Definitions: docs/QUALITY.md, `contrail.core.quality_signals`,
`contrail.distill.las`.

Command line (the `contrail eval` / `contrail export` subcommands call these):

    python -m contrail.distill.report eval runs/a.jsonl [runs/b.jsonl ...] [--no-las]
        [--simulator MODEL] [--simulator-kind trained|zero-shot] [--simulator-layer N]
        [--simulator-training auto|head|cross-fit] [--train-data FILE] [--folds K]
        [--calibration batch|none] [--json out.json] [--report-dir DIR]
    python -m contrail.distill.report export runs/a.jsonl --out-dir runs/a-student
        [--dev-fraction 0.1] [--seed 0] [--no-parquet]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from contrail.client.types import RationaleRecord
from contrail.core.quality_signals import (
    RecordSignals,
    SignalSummary,
    SignalTotals,
    record_signals,
)
from contrail.distill.export import export_student, load_records
from contrail.distill.las import (
    Calibration,
    Estimate,
    LasResult,
    LikelihoodSimulator,
    RecordSimulator,
    SimulatedRecord,
    Simulator,
    evaluate_las,
)
from contrail.distill.options import DEFAULT_BOOTSTRAP, add_eval_arguments, add_export_arguments
from contrail.distill.simulators import (
    TrainedSimulator,
)

AnySimulator = Simulator | RecordSimulator

QUALITY_SCHEMA_VERSION = "1"


class QualitySummary(BaseModel):
    """A dataset's rationale quality: counts, cheap signals (all and per tag), LAS if computed."""

    schema_version: str = QUALITY_SCHEMA_VERSION
    records: int
    error_records: int
    counts_by_tag: dict[str, int]
    signals: SignalSummary
    signals_by_tag: dict[str, SignalSummary]
    las: LasResult | None = None
    las_note: str | None = Field(
        default=None, description="in a job manifest: how LAS was computed, or why it was not"
    )


def summarize(
    records: Sequence[RationaleRecord],
    simulator: AnySimulator | None = None,
    *,
    calibration: Calibration = "batch",
    bootstrap_reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> QualitySummary:
    """Quality summary of `records`; LAS only when a `simulator` is given (it runs a model)."""
    return summarize_with_predictions(
        records, simulator, calibration=calibration, bootstrap_reps=bootstrap_reps, seed=seed
    )[0]


def summarize_with_predictions(
    records: Sequence[RationaleRecord],
    simulator: AnySimulator | None = None,
    *,
    calibration: Calibration = "batch",
    bootstrap_reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[QualitySummary, list[SimulatedRecord]]:
    """`summarize`, and the simulator's per-record predictions (empty without a simulator)."""
    ok = [r for r in records if r.error is None]
    las: LasResult | None = None
    sims: list[SimulatedRecord] = []
    if simulator is not None:
        las, sims = evaluate_las(
            ok, simulator, calibration=calibration, reps=bootstrap_reps, seed=seed
        )
    summary = summary_from_signals([record_signals(r) for r in ok], len(records) - len(ok))
    summary.las = las
    return summary, sims


class QualityTotals:
    """The cheap part of a `QualitySummary`, accumulated record by record (overall and per tag)
    in bounded memory: the job finalizer streams a dataset through one."""

    def __init__(self) -> None:
        self.overall = SignalTotals()
        self.by_tag: dict[str, SignalTotals] = {}

    def add(self, s: RecordSignals) -> None:
        self.overall.add(s)
        self.by_tag.setdefault(s.tag, SignalTotals()).add(s)

    def summary(self, error_records: int = 0) -> QualitySummary:
        return QualitySummary(
            records=self.overall.n + error_records,
            error_records=error_records,
            counts_by_tag={t: self.by_tag[t].n for t in sorted(self.by_tag)},
            signals=self.overall.summary(),
            signals_by_tag={t: self.by_tag[t].summary() for t in sorted(self.by_tag)},
        )


def summary_from_signals(
    signals: Sequence[RecordSignals], error_records: int = 0
) -> QualitySummary:
    """The cheap part of `summarize`, from per-record signals."""
    totals = QualityTotals()
    for s in signals:
        totals.add(s)
    return totals.summary(error_records)


def evaluate_file(
    path: Path,
    simulator: AnySimulator | None = None,
    *,
    calibration: Calibration = "batch",
    bootstrap_reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    details_path: Path | None = None,
) -> QualitySummary:
    """`summarize` a dataset file; `details_path` gets one JSON line per record (signals, and the
    simulator's predictions when LAS runs)."""
    records = load_records(path)
    summary, sims = summarize_with_predictions(
        records, simulator, calibration=calibration, bootstrap_reps=bootstrap_reps, seed=seed
    )
    if details_path is not None:
        simulated = {(s.item_id, s.tag): s for s in sims}
        details_path.parent.mkdir(parents=True, exist_ok=True)
        with details_path.open("w", encoding="utf-8") as fh:
            for rec in records:
                if rec.error is not None:
                    continue
                row = record_signals(rec).model_dump()
                sim = simulated.get((rec.item_id, rec.tag.value))
                if sim is not None:
                    row |= {"pred_qr": sim.pred_qr, "pred_q": sim.pred_q, "pred_r": sim.pred_r}
                    row["target"] = sim.target
                fh.write(json.dumps(row) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------
# Comparison reports
# ---------------------------------------------------------------------------------------------

ComparisonRow = tuple[str, str, QualitySummary]  # (group e.g. task, variant e.g. mode, summary)


def _fmt(e: Estimate | None, pct: bool = False) -> str:
    if e is None or math.isnan(e.value):
        return "-"
    k = 100.0 if pct else 1.0
    digits = 1 if pct else 3
    return f"{e.value * k:.{digits}f} [{e.low * k:.{digits}f}, {e.high * k:.{digits}f}]"


def _num(e: Estimate | None) -> str:
    return "-" if e is None or math.isnan(e.value) else f"{e.value:.3f}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def comparison_table(rows: Sequence[ComparisonRow]) -> str:
    """A markdown table: one row per dataset; LAS and accuracies with 95% bootstrap CIs."""
    head = (
        "| task | mode | n | LAS [95% CI] | acc Q+R % | acc Q % | acc R = leak % "
        "| gain leaked | gain non-leaked | words (mean) | restates % | names other % |\n"
        "|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for group, variant, s in rows:
        las = s.las
        lines.append(
            "| "
            + " | ".join(
                [
                    group,
                    variant,
                    str(las.scored if las else s.signals.records),
                    _fmt(las.las if las else None),
                    _fmt(las.acc_qr if las else None, pct=True),
                    _fmt(las.acc_q if las else None, pct=True),
                    _fmt(las.leak_rate if las else None, pct=True),
                    _num(las.gain_leaked if las else None),
                    _num(las.gain_nonleaked if las else None),
                    f"{s.signals.mean_words:.1f}",
                    _rate(s.signals.restate_rate),
                    _rate(s.signals.names_other_choice_rate),
                ]
            )
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def simulator_notes(rows: Sequence[ComparisonRow]) -> str:
    """Markdown lines saying which simulator produced each row's LAS, how it was trained and
    what it cost (empty when no row has LAS)."""
    lines = []
    for group, variant, s in rows:
        info = s.las.simulator_info if s.las else None
        if info is None:
            continue
        label = " ".join(x for x in (group, variant) if x)
        how = info.training
        if info.kind == "trained":
            how += f"; {info.train_records} training records ({info.train_items} items), seed"
            how += f" {info.seed}; head: {info.head}; layer {info.layer}"
        else:
            how += f"; calibration {info.calibration}"
        cost = f"head training {info.train_seconds:.1f} s"
        if info.head_train_seconds is not None:
            cost = f"training the committed head took {info.head_train_seconds:.0f} s when made"
        lines.append(
            f"- {label}: simulator `{info.name}` ({info.kind}); {how}; model forward passes "
            f"{info.feature_seconds:.1f} s (cumulative in this run), {cost}"
        )
    return "\n".join(lines) + ("\n" if lines else "")


def comparison_chart(rows: Sequence[ComparisonRow], path: Path, title: str | None = None) -> Path:
    """A PNG of grouped bars (groups x variants) for LAS, acc Q+R, leak rate, restates and
    names-other rates; CI whiskers where the metric has a bootstrap CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys(g for g, _, _ in rows))
    variants = list(dict.fromkeys(v for _, v, _ in rows))
    table = {(g, v): s for g, v, s in rows}
    panels: list[tuple[str, str]] = [
        ("LAS", "las"),
        ("simulator acc Q+R", "acc_qr"),
        ("leak rate (acc R)", "leak_rate"),
        ("restates (share)", "restate"),
        ("names other choice (share)", "names_other"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(groups))
    for ax, (label, key) in zip(axes, panels, strict=True):
        for k, variant in enumerate(variants):
            vals, lows, highs = [], [], []
            for g in groups:
                s = table.get((g, variant))
                est: Estimate | None = None
                val = math.nan
                if s is not None and key in ("las", "acc_qr", "leak_rate") and s.las is not None:
                    est = getattr(s.las, key)
                    val = est.value
                elif s is not None and key == "restate":
                    val = s.signals.restate_rate
                elif s is not None and key == "names_other":
                    val = s.signals.names_other_choice_rate or 0.0
                vals.append(val)
                lows.append(val - est.low if est else 0.0)
                highs.append(est.high - val if est else 0.0)
            ax.bar(
                x + (k - (len(variants) - 1) / 2) * width,
                vals,
                width,
                yerr=[lows, highs] if any(lows) or any(highs) else None,
                capsize=3,
                label=variant,
            )
        ax.set_title(label, fontsize=10)
        ax.set_xticks(x, groups)
        ax.axhline(0.0, color="black", linewidth=0.6)
    if any(variants):
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_simulator(args: argparse.Namespace) -> AnySimulator | None:
    """The simulator the `eval` options ask for (None with --no-las); raises ValueError for an
    unusable option (unknown model, bad layer, too few training records)."""
    if args.no_las:
        return None
    if args.simulator_kind == "zero-shot":
        return LikelihoodSimulator(args.simulator)
    train = None
    if args.train_data is not None:
        if not Path(args.train_data).is_file():
            raise ValueError(f"--train-data: no such file: {args.train_data}")
        train = load_records(Path(args.train_data))
    return TrainedSimulator(
        args.simulator,
        layer=args.simulator_layer,
        folds=args.folds,
        seed=args.seed,
        train_records=train,
        train_source=str(args.train_data) if train is not None else None,
        training=args.simulator_training,
    )


def dataset_label(records: Sequence[RationaleRecord], path: Path) -> tuple[str, str]:
    """(group, variant) of a dataset from its records: the task(s), and the decoding mode (with
    the perturbation for contrastive decoding) and tags, e.g. ("strategyqa",
    "contrastive-wrong · factual+counterfactual"). The file name only when there are none."""
    if not records:
        return "", path.stem
    tasks = "+".join(sorted({r.task.value for r in records}))
    modes = sorted(
        {
            r.decoding.mode.value
            + (f"-{r.decoding.perturbation.value}" if r.decoding.perturbation else "")
            for r in records
        }
    )
    tags = "+".join(sorted({r.tag.value for r in records}, key=lambda t: t != "factual"))
    return tasks, f"{'+'.join(modes)} · {tags}"


def run_eval(args: argparse.Namespace) -> int:
    simulator = build_simulator(args)
    summaries: dict[str, QualitySummary] = {}
    labels: dict[str, tuple[str, str]] = {}
    for path in args.datasets:
        records = load_records(path)
        labels[str(path)] = dataset_label(records, Path(path))
        summaries[str(path)] = summarize(
            records,
            simulator,
            calibration=args.calibration,
            bootstrap_reps=args.bootstrap,
            seed=args.seed,
        )
    seen = Counter(labels.values())
    rows = [
        (group, variant if seen[(group, variant)] == 1 else f"{variant} ({Path(p).stem})", s)
        for p, s in summaries.items()
        for group, variant in [labels[p]]
    ]
    report = comparison_table(rows) + "\n" + simulator_notes(rows)
    print(report, end="")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {p: s.model_dump(mode="json") for p, s in summaries.items()}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "report.md").write_text(report, encoding="utf-8")
        comparison_chart(rows, args.report_dir / "report.png")
    return 0


def run_export(args: argparse.Namespace) -> int:
    summary = export_student(
        load_records(args.dataset),
        args.out_dir,
        dev_fraction=args.dev_fraction,
        seed=args.seed,
        parquet=not args.no_parquet,
        formats=[f.strip() for f in args.formats.split(",") if f.strip()],
    )
    print(summary.model_dump_json(indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrail.distill")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_arguments(sub.add_parser("eval", help="rationale quality (signals + LAS)"))
    add_export_arguments(sub.add_parser("export", help="student-training export"))
    args = parser.parse_args(argv)
    return run_eval(args) if args.command == "eval" else run_export(args)


if __name__ == "__main__":
    raise SystemExit(main())
