"""The student experiment (issue 21, docs/quality/STUDENT.md): does a student trained on
contrastively decoded rationales, with counterfactual training, answer more faithfully to its
rationales at about the same accuracy?

For one task (CREAK by default, where the LAS simulator is validated):
1. teacher datasets with contrail on the first `--train-items` training items: greedy,
   contrastive-empty, and contrastive-wrong with a counterfactual for every item;
2. the evaluation set: the first `--dev-items` dev items, contrastive-wrong with counterfactuals
   (the teacher's rationale for the oracle, a counterfactual rationale for following);
3. students per seed: `answer` (no rationale), `factual` on each decoding, `scott` on
   contrastive-wrong, all trained the same way;
4. every student evaluated on every evaluation item (`contrail.distill.student.evaluate`, with
   LAS under the task's committed simulator head), and compared with the `factual` student on
   contrastive-wrong by a paired bootstrap.

Writes `--out` (JSON with provenance). Run it at a clean commit; it takes hours at the defaults
on 2 cores (the teacher's generation and five trainings per seed).

    nice -n 10 .venv/bin/python bench/student.py --task creak --out docs/quality/student-creak.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from las_validation import DATA, task_files
from provenance import git_sha

from contrail.client.types import DecodingMode, DecodingSettings, Perturbation, TaskName
from contrail.distill.export import load_records
from contrail.distill.las import evaluate_las
from contrail.distill.simulators import TrainedSimulator
from contrail.distill.student.evaluate import StudentEval, compare, evaluate
from contrail.distill.student.hf import HFStudent
from contrail.distill.student.train import TrainConfig, TrainReport, train
from contrail.worker.engine.factory import create_engine
from contrail.worker.generation.offline import run_generate

DECODINGS: dict[str, DecodingSettings] = {
    "greedy": DecodingSettings(mode=DecodingMode.GREEDY),
    "contrastive-empty": DecodingSettings(perturbation=Perturbation.EMPTY),
    "contrastive-wrong": DecodingSettings(counterfactual_fraction=1.0),
}
# (student, objective, teacher dataset)
STUDENTS = [
    ("answer", "answer", "contrastive-wrong"),
    ("factual-greedy", "factual", "greedy"),
    ("factual-empty", "factual", "contrastive-empty"),
    ("factual-wrong", "factual", "contrastive-wrong"),
    ("scott", "scott", "contrastive-wrong"),
]
BASELINE = "factual-wrong"


def teacher_datasets(
    args: argparse.Namespace, task: TaskName, train_file: Path, dev_file: Path, work: Path
) -> tuple[dict[str, Path], Path, dict[str, float | None]]:
    """Decode the teacher's datasets with one engine (a vLLM start costs minutes on CPU). A file
    is named by its size and token cap, so a rerun with other sizes does not reuse it."""
    seconds: dict[str, float] = {}
    timings = work / "teacher" / "seconds.json"
    tag = f"{args.max_new_tokens}tok"
    teacher = work / "teacher"
    wanted = {
        f"train-{name}": (train_file, settings, args.train_items,
                          teacher / f"train-{name}-{args.train_items}-{tag}.jsonl")
        for name, settings in DECODINGS.items()
    }  # fmt: skip
    wanted["dev"] = (dev_file, DECODINGS["contrastive-wrong"], args.dev_items,
                     teacher / f"dev-contrastive-wrong-{args.dev_items}-{tag}.jsonl")  # fmt: skip
    missing = {k: v for k, v in wanted.items() if not v[3].is_file()}
    if missing:
        engine = create_engine(args.engine, args.teacher)
        for key, (source, settings, limit, path) in missing.items():
            start = time.perf_counter()
            partial = path.with_suffix(".partial.jsonl")
            capped = settings.model_copy(update={"max_new_tokens": args.max_new_tokens})
            run_generate(
                source, partial, task, capped,
                engine=engine, limit=limit, parquet=False, progress=False,
            )  # fmt: skip
            partial.replace(path)  # only a finished file counts as cached
            errors = partial.with_suffix(".errors.jsonl")  # run_generate's item errors, if any
            if errors.is_file():
                errors.replace(path.with_suffix(".errors.jsonl"))
            seconds[path.name] = round(time.perf_counter() - start, 1)
            print(f"teacher {key}: {seconds[path.name]} s", flush=True)
            timings.write_text(json.dumps(_timings(timings) | seconds, indent=2) + "\n")
        # vLLM's CPU backend binds its threads and cuts torch to one thread in this process;
        # the students train in a fresh one, which finds every teacher file done.
        print("teacher datasets done; restarting for the students", flush=True)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    out = {name: wanted[f"train-{name}"][3] for name in DECODINGS}
    known = _timings(timings)
    used = {p.name: known.get(p.name) for p in [*out.values(), wanted["dev"][3]]}
    return out, wanted["dev"][3], used


def _timings(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def student_run(
    args: argparse.Namespace,
    folder: Path,
    config: TrainConfig,
    data: Path,
    eval_records: list[Any],
    simulator: TrainedSimulator | None,
    name: str,
) -> tuple[TrainReport, StudentEval, float]:
    """Train and evaluate one student, or read both back when a previous run finished them."""
    done = folder / "eval.json"
    if done.is_file() and (folder / "report.json").is_file():
        report = TrainReport.model_validate_json((folder / "report.json").read_text())
        cached = json.loads(done.read_text())
        return report, StudentEval.model_validate(cached["eval"]), cached["seconds"]
    report = train(data, folder, config)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # 1.6 GB each; the model stays
    start = time.perf_counter()
    result = evaluate(
        HFStudent(folder / "model"), eval_records, name=name, seed=config.seed,
        reps=args.bootstrap, las=_las(simulator, config.seed),
    )  # fmt: skip
    seconds = round(time.perf_counter() - start, 1)
    done.write_text(json.dumps({"eval": result.model_dump(mode="json"), "seconds": seconds}))
    return report, result, seconds


def _las(simulator: TrainedSimulator | None, seed: int) -> Any:
    if simulator is None:
        return None
    return lambda recs: evaluate_las(recs, simulator, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=["creak", "strategyqa"], default="creak")
    p.add_argument("--data-dir", type=Path, default=DATA, help="the research splits' folder")
    p.add_argument("--train-items", type=int, default=400)
    p.add_argument("--dev-items", type=int, default=200)
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--student", default="smollm2-135m")
    p.add_argument("--engine", default="auto")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=3e-5)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--no-las", action="store_true")
    p.add_argument("--work", type=Path, default=Path("runs/student-bench"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    label = {"creak": "CREAK", "strategyqa": "StrategyQA"}[args.task]
    task = TaskName(args.task)
    dev_files, train_files = task_files(args.data_dir)
    train_file, dev_file = train_files[label], dev_files[label][1]
    for f in (train_file, dev_file):
        if not f.is_file():
            raise SystemExit(f"{f}: research data missing (pass --data-dir)")
    work = args.work / args.task
    provenance = git_sha()
    started = time.perf_counter()
    teacher, dev_path, teacher_seconds = teacher_datasets(args, task, train_file, dev_file, work)
    eval_records = load_records(dev_path)
    simulator = None if args.no_las else TrainedSimulator("smollm2-135m")  # the validated reader
    runs: list[dict[str, Any]] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        evals = {}
        for name, objective, source in STUDENTS:
            folder = work / f"seed{seed}" / name
            config = TrainConfig(
                model=args.student, objective=objective, seed=seed, epochs=args.epochs,  # type: ignore[arg-type]
                batch_size=args.batch_size, learning_rate=args.learning_rate,
            )  # fmt: skip
            report, result, eval_seconds = student_run(
                args, folder, config, teacher[source], eval_records, simulator, name
            )
            evals[name] = result
            runs.append(
                {"seed": seed, "student": name, "objective": objective, "teacher_data": source,
                 "train": report.model_dump(mode="json"), "eval_seconds": eval_seconds,
                 "eval": result.model_dump(mode="json", exclude={"results", "las_records"})}
            )  # fmt: skip
            print(f"seed {seed} {name}: " + ", ".join(
                f"{k} {v.value:.3f}" for k, v in result.metrics.items()), flush=True)  # fmt: skip
        for name in evals:
            if name != BASELINE:
                c = compare(evals[name], evals[BASELINE], reps=args.bootstrap, seed=seed)
                runs.append({"seed": seed, "comparison": c.model_dump(mode="json")})
    payload = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "provenance": provenance,
        "teacher_seconds": teacher_seconds,
        "eval_items": len({r.item_id for r in eval_records}),
        "students_seconds": round(time.perf_counter() - started, 1),  # after the teacher
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
