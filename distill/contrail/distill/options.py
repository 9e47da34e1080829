"""Command-line options of `eval`, the LAS simulator and the student export, shared by `contrail
eval` / `contrail export` / `contrail eval-student` and `python -m contrail.distill eval|export`.

Kept free of numpy and torch: the `contrail` CLI builds its parser from this module on every
start, and the simulator modules take their defaults from here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final, Literal

# The LAS simulator's reader: the model and layer the committed heads were trained on. Every
# default of a simulator, of manifest LAS and of the CLI takes them from here.
DEFAULT_SIMULATOR: Final = "smollm2-135m"
DEFAULT_LAYER: Final = 16
DEFAULT_FOLDS: Final = 5
DEFAULT_BOOTSTRAP: Final = 1000  # resamples of every bootstrap CI
Training = Literal["auto", "head", "cross-fit"]  # the `--simulator-training` choices
TRAININGS: Final[tuple[Training, ...]] = ("auto", "head", "cross-fit")
Format = Literal["trl", "axolotl", "llamafactory", "native"]  # the export's training-tool formats
FORMATS: Final[tuple[Format, ...]] = ("trl", "axolotl", "llamafactory", "native")


def add_eval_arguments(p: argparse.ArgumentParser, *, job_ids: bool = False) -> None:
    """The options of `contrail eval` (``job_ids``: datasets may be job ids, fetched through the
    API) and of `python -m contrail.distill eval` (files only)."""
    if job_ids:
        p.add_argument("datasets", nargs="+", help="dataset .jsonl/.parquet files or job ids")
    else:
        p.add_argument("datasets", nargs="+", type=Path, help="dataset .jsonl or .parquet files")
    add_simulator_arguments(p)
    add_bootstrap_arguments(p)
    p.add_argument("--json", type=Path, default=None, help="write the summaries here")
    p.add_argument(
        "--report-dir", type=Path, default=None, help="write report.md + report.png here"
    )


def add_bootstrap_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)


def add_simulator_arguments(p: argparse.ArgumentParser) -> None:
    """The LAS simulator options of `python -m contrail.distill eval` and of the
    `contrail eval` command."""
    p.add_argument("--no-las", action="store_true", help="cheap signals only (no model)")
    p.add_argument(
        "--simulator", default=DEFAULT_SIMULATOR, help="simulator language model: name or folder"
    )
    p.add_argument(
        "--simulator-kind",
        choices=["trained", "zero-shot"],
        default="trained",
        help="trained: frozen LM + logistic head trained on held-out-free data (default); "
        "zero-shot: option log-likelihood after a fixed prompt",
    )
    p.add_argument(
        "--simulator-layer",
        type=int,
        default=DEFAULT_LAYER,
        help=f"hidden layer the trained simulator reads (default {DEFAULT_LAYER})",
    )
    p.add_argument(
        "--simulator-training",
        choices=TRAININGS,
        default="auto",
        help="trained simulator's head: auto (default) = the committed head of the dataset's "
        "task (StrategyQA, CREAK; trained on the task's training split) when there is one, "
        "else cross-fit on the dataset; head = insist on the committed head; cross-fit = always "
        "cross-fit",
    )
    p.add_argument(
        "--train-data",
        type=Path,
        default=None,
        help="records (.jsonl/.parquet) to train the simulator on (overrides --simulator-training)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=DEFAULT_FOLDS,
        help=f"cross-fitting folds by item (default {DEFAULT_FOLDS})",
    )
    p.add_argument(
        "--calibration",
        choices=["batch", "none"],
        default="batch",
        help="zero-shot simulator only: batch calibration of option scores",
    )


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset .jsonl or .parquet file")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-parquet", action="store_true")
    p.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"training-tool formats beside the paper's, comma-separated (default "
        f"{','.join(FORMATS)}; '' for none)",
    )
