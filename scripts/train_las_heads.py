"""Train the LAS simulator heads committed for the built-in tasks (distill/contrail/distill/data/
las_heads/<task>.npz; sources, licenses and the exact command: SOURCES.md beside them).

For each task: the TRAIN split of the project's shared data, one record per item whose rationale
is the item's human rationale and whose rationalised answer is the gold answer (StrategyQA: the
facts; CREAK: the explanation). The frozen reader (SmolLM2-135M, layer 16) reads the Q+R, Q and R
prompts of every record; a logistic head is fitted on the three conditions of every record
(rationale dropout in feature space). The regularisation C is chosen on the training split alone:
5-fold cross-validation by item, keeping the C with the highest held-out LAS (the quantity the
validation measures; ties go to the stronger regularisation). Dev splits are never read.

    nice -n 10 .venv/bin/python scripts/train_las_heads.py                  # both tasks
    nice -n 10 .venv/bin/python scripts/train_las_heads.py --tasks creak --creak-limit 4000 \\
        --feature-store runs/features.sqlite      # reuse hidden states across runs
    nice -n 10 .venv/bin/python scripts/train_las_heads.py --out runs/heads   # a rerun: is it
        # what is committed? (the summary says, per task, under "matches_committed")

The head arrays are deterministic for a given reader and data; the recorded seconds are not. The
summary (docs/quality/las-heads.json) records the commit it was made at (bench/provenance.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.las_validation import TRAIN, human_records  # noqa: E402
from bench.provenance import git_sha  # noqa: E402
from contrail.client.types import TaskName  # noqa: E402
from contrail.distill.heads import (  # noqa: E402
    HEAD_FORMAT,
    HEADS_DIR,
    LinearHead,
    SimulatorHead,
    builtin_head,
    probe_prompts,
    prompt_sha256,
)
from contrail.distill.las import CONDITIONS, bootstrap, record_options  # noqa: E402
from contrail.distill.simulators import (  # noqa: E402
    DEFAULT_LAYER,
    HiddenStateEncoder,
    TrainedSimulator,
    answer_class,
    fold_of,
)

TASKS = {"strategyqa": ("StrategyQA", TaskName.STRATEGYQA), "creak": ("CREAK", TaskName.CREAK)}
SOURCES = {
    "strategyqa": "StrategyQA train (eladsegal/strategyqa, MIT): human facts as rationale",
    "creak": "CREAK train (yasumasaonoe/creak, MIT): human explanation as rationale",
}
C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01)


def cross_validate(
    feats: dict[str, np.ndarray], y: np.ndarray, items: list[str], c: float, folds: int, seed: int
) -> dict[str, float]:
    """Held-out statistics of a head with regularisation `c` (folds by item)."""
    fold = np.array([fold_of(i, folds, seed) for i in items])
    correct = np.zeros((len(y), 3), dtype=bool)
    loss = 0.0
    for k in range(folds):
        test = fold == k
        head = LinearHead.fit({cd: f[~test] for cd, f in feats.items()}, y[~test], c)  # type: ignore[misc]
        for j, cond in enumerate(CONDITIONS):
            p = head.proba(cond, {cd: f[test] for cd, f in feats.items()}, 2)  # type: ignore[arg-type]
            correct[test, j] = p.argmax(1) == y[test]
            loss -= float(np.log(np.clip(p[np.arange(test.sum()), y[test]], 1e-12, 1)).sum())
    stats = bootstrap(correct[:, 0], correct[:, 1], correct[:, 2], reps=0)
    return {
        "c": c,
        "log_loss": round(loss / (3 * len(y)), 4),
        **{k: stats[k].value for k in ("las", "acc_qr", "acc_q", "acc_r")},
    }


def train_task(key: str, args: argparse.Namespace, encoder: HiddenStateEncoder) -> dict[str, Any]:
    label, task = TASKS[key]
    limit = args.creak_limit if key == "creak" else None
    records, _ = human_records(task, TRAIN[label], limit, args.seed)
    kept = [(r, opts) for r in records if (opts := record_options(r)) is not None]
    y = np.array([answer_class(r, o, r.answer) for r, o in kept], dtype=int)
    before, stored_before = encoder.seconds, encoder.stored_seconds
    sim = TrainedSimulator(encoder=encoder, seed=args.seed)
    feats = sim._features(kept)
    feature_seconds = encoder.seconds - before + encoder.stored_seconds - stored_before
    items = [r.item_id for r, _ in kept]
    start = time.perf_counter()
    cv = [cross_validate(feats, y, items, c, args.folds, args.seed) for c in C_GRID]  # type: ignore[arg-type]
    best = max(cv, key=lambda r: (r["las"], -r["c"]))
    head = LinearHead.fit(feats, y, best["c"])
    fit_seconds = time.perf_counter() - start
    meta = {
        "format": HEAD_FORMAT,
        "model": encoder.model_name,
        "layer": encoder.layer,
        "prompt_sha256": prompt_sha256(task),
        "c": best["c"],
        "seed": args.seed,
        "train_source": f"{SOURCES[key]}, {len(kept)} items"
        + (f" (the first {limit} of the file)" if limit else ""),
        "train_records": len(kept),
        "train_items": len(set(items)),
        "train_seconds": round(feature_seconds + fit_seconds, 1),
        "feature_seconds": round(feature_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "selection": f"C from {list(C_GRID)} by {args.folds}-fold CV by item on the training "
        "split: highest held-out LAS",
        "cv": cv,
    }
    probe = encoder.encode(probe_prompts(task))
    out = SimulatorHead(task, head, probe, meta)
    same = matches_committed(out, builtin_head(task))  # read before the default --out replaces it
    path = args.out / f"{task.value}.npz"
    path.write_bytes(out.to_bytes())
    print(f"{key}: C={best['c']} cv={cv} -> {path}", file=sys.stderr)
    return {**meta, "matches_committed": same}


def matches_committed(made: SimulatorHead, committed: SimulatorHead | None) -> bool | None:
    """Whether `made` has the arrays of `committed`, the head the package shipped for its task
    (their recorded seconds aside); None when the package had none."""
    if committed is None:
        return None
    a, b = made.head, committed.head
    pairs = [(a.means, b.means), (a.stds, b.stds), (a.coef, b.coef), (a.intercept, b.intercept)]
    same_shape = all(x.shape == y.shape for x, y in pairs) and np.array_equal(a.classes, b.classes)
    return same_shape and all(np.allclose(x, y, rtol=1e-6, atol=1e-9) for x, y in pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default="strategyqa,creak")
    p.add_argument("--creak-limit", type=int, default=4000, help="first N CREAK train items")
    p.add_argument("--simulator", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: library default)")
    p.add_argument("--feature-store", type=Path, default=None, help="SQLite cache of states")
    package = ROOT / "distill" / "contrail" / "distill"
    p.add_argument("--out", type=Path, default=package / HEADS_DIR, help="(the package's heads)")
    p.add_argument("--summary", type=Path, default=ROOT / "docs" / "quality" / "las-heads.json")
    args = p.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    provenance = git_sha()
    start = time.perf_counter()
    encoder = HiddenStateEncoder(args.simulator, layer=args.layer, store=args.feature_store)
    summary = {key: train_task(key, args, encoder) for key in args.tasks.split(",")}
    command = "python scripts/train_las_heads.py " + " ".join(argv or sys.argv[1:])
    payload = {
        "command": command,
        "provenance": {**provenance, "command": command},
        "total_seconds": round(time.perf_counter() - start, 1),
        "out": str(args.out),
        "heads": summary,
    }
    args.summary.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
