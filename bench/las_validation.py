"""Does the LAS simulator tell human rationales from random ones? (docs/QUALITY.md, validation)

On StrategyQA dev and CREAK dev (the project's shared copy of the data), each item gets two
records with the gold answer as the rationalised answer: one whose rationale is the item's own
human rationale (StrategyQA facts, CREAK explanation) and one whose rationale is another item's
human rationale (a seeded derangement: every item gets a different item's rationale). A simulator
that reads rationales must give the human records a higher LAS than the shuffled ones (paired
bootstrap over items) and a higher accuracy from question + rationale than from the question.

    nice -n 10 .venv/bin/python bench/las_validation.py         # committed heads + cross-fit
    nice -n 10 .venv/bin/python bench/las_validation.py --simulators head,cross-fit,zero-shot \
        --out docs/quality/validation-heads.json                 # every row of VALIDATION.md's
        # table but the train-split one:
    nice -n 10 .venv/bin/python bench/las_validation.py --simulators train-split \
        --tasks StrategyQA --out docs/quality/validation-train-split.json
        # the simulator trained once on the task's training split (human rationales) with
        # C = 0.001 (--train-split-c), instead of cross-fitted on the dev records

Writes a JSON file (every number, the settings and the timings) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_sha

from contrail.client.types import (
    DecodingMode,
    FinishReason,
    Perturbation,
    RationaleRecord,
    RecordDecoding,
    Tag,
    TaskName,
)
from contrail.core.tasks.formats import load_items
from contrail.distill.las import (
    LikelihoodSimulator,
    RecordSimulator,
    Simulator,
    evaluate_las,
    paired_difference,
)
from contrail.distill.simulators import (
    DEFAULT_FOLDS,
    DEFAULT_LAYER,
    HiddenStateEncoder,
    TrainedSimulator,
    Training,
)

ROOT = Path(__file__).resolve().parents[1]
# The full research splits: a data folder beside the checkout (the tests carry their own copies
# of the dev splits, tests/data/research).
DATA = ROOT.parent / "shared" / "data"


def task_files(data: Path) -> tuple[dict[str, tuple[TaskName, Path]], dict[str, Path]]:
    """The dev file of each task under a research-data folder, and its training file."""
    dev = {
        "StrategyQA": (TaskName.STRATEGYQA, data / "strategyqa" / "dev.json"),
        "CREAK": (TaskName.CREAK, data / "creak" / "dev.json"),
    }
    train = {
        "StrategyQA": data / "strategyqa" / "train.json",
        "CREAK": data / "creak" / "train.json",
    }
    return dev, train


TASKS, TRAIN = task_files(DATA)  # TRAIN is read by scripts/train_las_heads.py too


def human_records(
    task: TaskName, path: Path, limit: int | None, seed: int
) -> tuple[list[RationaleRecord], list[RationaleRecord]]:
    """(records with each item's human rationale, records with a deranged item's rationale)."""
    if not path.is_file():
        raise SystemExit(
            f"{path}: research data missing (the benchmarks read the full splits from a data "
            "folder beside the checkout, or the one --data-dir names)"
        )
    loaded = load_items(path, task)
    items = [i for i in loaded.items if i.rationale][:limit]
    order = list(range(len(items)))
    rng = random.Random(seed)
    while any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)

    def record(item_index: int, rationale: str) -> RationaleRecord:
        item = items[item_index]
        return RationaleRecord(
            item_id=item.id,
            task=task,
            question=item.question,
            choices=item.choices,
            gold_answer=item.answer,
            answer=item.answer,
            tag=Tag.FACTUAL,
            rationale=rationale,
            decoding=RecordDecoding(
                mode=DecodingMode.GREEDY,
                perturbation=Perturbation.WRONG,
                contrast_answer=None,
                temperature=1.0,
                max_new_tokens=0,
                seed=seed,
            ),
            model="human",
            finish_reason=FinishReason.STOP,
            prompt_tokens=0,
            completion_tokens=0,
        )

    human = [record(i, str(items[i].rationale)) for i in range(len(items))]
    shuffled = [record(i, str(items[order[i]].rationale)) for i in range(len(items))]
    return human, shuffled


def validate(
    name: str,
    simulator: Simulator | RecordSimulator,
    human: list[RationaleRecord],
    shuffled: list[RationaleRecord],
    reps: int,
    seed: int,
) -> dict[str, Any]:
    start = time.perf_counter()
    res_h, sims_h = evaluate_las(human, simulator, reps=reps, seed=seed)
    res_s, sims_s = evaluate_las(shuffled, simulator, reps=reps, seed=seed)
    diff = paired_difference(sims_h, sims_s, reps=reps, seed=seed)
    # Accuracy gain of Q+R over Q on the human records, paired over the same records.
    gain = paired_difference(
        [s.model_copy(update={"pred_q": s.pred_qr}) for s in sims_h],
        [s.model_copy(update={"pred_qr": s.pred_q}) for s in sims_h],
        reps=reps,
        seed=seed,
    )["acc_qr"]
    las_ok = diff["las"].low > 0
    acc_ok = gain.low > 0
    return {
        "simulator": name,
        "human": res_h.model_dump(mode="json"),
        "shuffled": res_s.model_dump(mode="json"),
        "las_human_minus_shuffled": diff["las"].model_dump(),
        "acc_qr_human_minus_shuffled": diff["acc_qr"].model_dump(),
        "acc_qr_minus_acc_q_human": gain.model_dump(),
        "passes": {"las_above_shuffled": las_ok, "acc_qr_above_acc_q": acc_ok},
        "seconds": round(time.perf_counter() - start, 1),
    }


def _ci(e: dict[str, float], pct: bool = False) -> str:
    k, d = (100.0, 1) if pct else (1.0, 3)
    return f"{e['value'] * k:+.{d}f} [{e['low'] * k:+.{d}f}, {e['high'] * k:+.{d}f}]"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| task | simulator | n | LAS human | LAS shuffled | LAS human - shuffled (paired) "
        "| acc Q+R % human | acc Q % | acc Q+R - acc Q (paired, pts) | acc R % human | passes |",
        "|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        task = key.split("/")[0]
        h, s = r["human"], r["shuffled"]
        ok = "yes" if all(r["passes"].values()) else "no"
        lines.append(
            f"| {task} | {r['simulator']} | {h['scored']} | {_ci(h['las'])} | {_ci(s['las'])} "
            f"| {_ci(r['las_human_minus_shuffled'])} | {100 * h['acc_qr']['value']:.1f} "
            f"| {100 * h['acc_q']['value']:.1f} | {_ci(r['acc_qr_minus_acc_q_human'], True)} "
            f"| {100 * h['acc_r']['value']:.1f} | {ok} |"
        )
    return "\n".join(lines) + "\n"


SIMULATORS = ("head", "cross-fit", "zero-shot", "train-split")
# How the results name each simulator (zero-shot by its own name).
LABELS = {
    "head": "trained (committed head)",
    "cross-fit": "trained (cross-fit)",
    "train-split": "trained (train split)",
}
# The train-split simulator's regularisation: chosen once by 5-fold cross-validation by item on
# StrategyQA's training split (held-out log-loss), before the committed heads existed.
TRAIN_SPLIT_C = 0.001


def make_simulator(
    kind: str,
    args: argparse.Namespace,
    encoder: HiddenStateEncoder | None,
    train: tuple[list[RationaleRecord], str] | None = None,
) -> Simulator | RecordSimulator:
    """The simulator `kind` names; `train` (records, description) for train-split."""
    if kind == "zero-shot":
        return LikelihoodSimulator(args.simulator)
    assert encoder is not None
    if kind == "train-split":
        assert train is not None
        return TrainedSimulator(
            encoder=encoder, c=args.train_split_c, folds=args.folds, seed=args.seed,
            train_records=train[0], train_source=train[1],
        )  # fmt: skip
    training: Training = "head" if kind == "head" else "cross-fit"
    return TrainedSimulator(encoder=encoder, folds=args.folds, seed=args.seed, training=training)


def train_split_records(
    task: str, task_name: TaskName, seed: int
) -> tuple[list[RationaleRecord], str]:
    """The task's training split as records with their human rationales, and its description."""
    train, _ = human_records(task_name, TRAIN[task], None, seed)
    return train, f"{task} train, first {len(train)} items, human rationales"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default="StrategyQA,CREAK", help="comma-separated (both)")
    p.add_argument("--strategyqa-limit", type=int, default=None, help="first N dev items (all)")
    p.add_argument("--creak-limit", type=int, default=None, help="first N dev items (all)")
    p.add_argument(
        "--simulators",
        default="head,cross-fit",
        help="comma-separated, of: head (trained simulator, the committed head of the task: the\n"
        "default of contrail eval), cross-fit (trained simulator cross-fitted on the dev\n"
        "records), zero-shot, train-split (trained once on the task's training split)\n"
        "(default: head,cross-fit)",
    )
    p.add_argument("--train-split-c", type=float, default=TRAIN_SPLIT_C)
    p.add_argument("--simulator", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: library default)")
    p.add_argument("--feature-store", type=Path, default=None, help="SQLite cache of states")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "quality" / "validation.json")
    args = p.parse_args(argv)
    kinds = args.simulators.split(",")
    if unknown := set(kinds) - set(SIMULATORS):
        p.error(f"unknown simulators: {sorted(unknown)}")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    limits = {"StrategyQA": args.strategyqa_limit, "CREAK": args.creak_limit}
    start = time.perf_counter()
    encoder = None
    if {"head", "cross-fit", "train-split"} & set(kinds):
        encoder = HiddenStateEncoder(args.simulator, layer=args.layer, store=args.feature_store)
    results: dict[str, dict[str, Any]] = {}
    for task, (task_name, path) in TASKS.items():
        if task not in args.tasks.split(","):
            continue
        human, shuffled = human_records(task_name, path, limits[task], args.seed)
        train = train_split_records(task, task_name, args.seed) if "train-split" in kinds else None
        for kind in kinds:
            label = LABELS.get(kind, kind)
            sim = make_simulator(kind, args, encoder, train)
            results[f"{task}/{label}"] = validate(
                label, sim, human, shuffled, args.bootstrap, args.seed
            )
            print(f"{task}/{label}: {results[f'{task}/{label}']['passes']}", file=sys.stderr)
    payload = {
        "settings": {
            k: (
                str(v.relative_to(ROOT))
                if isinstance(v, Path) and v.is_relative_to(ROOT)
                else str(v)
                if isinstance(v, Path)
                else v
            )
            for k, v in vars(args).items()
        },
        "provenance": git_sha(),
        "total_seconds": round(time.perf_counter() - start, 1),
        "results": results,
        "table": table(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(payload["table"])
    return 0 if all(all(r["passes"].values()) for k, r in results.items() if "head" in k) else 1


if __name__ == "__main__":
    raise SystemExit(main())
