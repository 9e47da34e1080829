"""The trained LAS simulator (the default): a frozen causal LM read at one layer, and a logistic
head trained on records whose rationalised answers it knows, then applied to held-out items only.

This is the protocol of Hase et al. (2020), as SCOTT used it, with one change that makes it fit a
2-core CPU: the simulator's language model stays frozen and only a linear head is trained.

Features. For each record the LM (default SmolLM2-135M, run only up to `layer`, default 16 of
30) reads the three zero-shot prompts of `las.render_context` -- question + rationale,
question alone, rationale alone -- and we keep its hidden state at the last prompt token
("... A: The answer is"), where the model would write the answer. A condition's feature vector
has one slot per prompt, each standardised with the training rows' mean and spread:

    Q+R: [h(Q), h(R), h(Q+R), 1, 1]     Q: [h(Q), 0, 0, 1, 0]     R: [0, h(R), 0, 0, 1]

Zeroed slots are the "rationale dropout" of Hase et al. in feature space: one head serves all
three conditions, and in the Q+R condition it can add the evidence of the question and of the
rationale instead of having to find both in one state.

Head. L2-regularised logistic regression (scikit-learn, lbfgs, `C` = 0.001 by default) over the
answer classes, trained on every condition of every training record (three rows per record).
Classes: for a binary task (StrategyQA yes/no, CREAK true/false) the option itself; for records
that show their choices in the prompt (multiple choice) the choice's position. Records whose
options the prompt does not show (free-form answers) cannot be scored and count as skipped.

Training data. Either (default) the evaluated records themselves, cross-fitted: items are split
into `folds` groups by a SHA-256 of (seed, item id), and each group is predicted by a head
trained on the other groups, so no record is scored by a head that saw its item (factual and
counterfactual records of an item share a group). Or a separate set of training records (a
training split of the user's data, or a task's training data with human rationales); records of
items that are also evaluated are left out of training.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from contrail.client.types import RationaleRecord, TaskName
from contrail.core.tasks.perturb import BINARY_CHOICES, unit_hash
from contrail.core.tasks.prompts import shows_choices
from contrail.distill.heads import LinearHead, SimulatorHead, builtin_head
from contrail.distill.las import (
    CONDITIONS,
    Condition,
    SimulatorInfo,
    render_context,
    sim_inputs,
    token_batches,
)
from contrail.distill.options import (
    DEFAULT_FOLDS,
    DEFAULT_LAYER,
    DEFAULT_SIMULATOR,
    TRAININGS,
    Training,
)

DEFAULT_C: Final = 0.001
MIN_TRAIN_RECORDS: Final = 20
_FOLD_SALT: Final = "las-simulator-fold"

Kept = tuple[RationaleRecord, tuple[str, ...]]


def answer_class(record: RationaleRecord, options: Sequence[str], answer: str) -> int | None:
    """The class of `answer` among `options` (see the module docstring); None when the record's
    options are neither its task's binary pair nor shown in the prompt."""
    folded = [o.casefold() for o in options]
    pair = BINARY_CHOICES.get(record.task)
    if pair is not None and sorted(folded) == sorted(pair):
        return pair.index(answer.casefold()) if answer.casefold() in pair else None
    if shows_choices(record.task, list(options)) and record.task.value != "generic":
        return folded.index(answer.casefold()) if answer.casefold() in folded else None
    return None


def option_of_class(record: RationaleRecord, options: Sequence[str], k: int) -> str | None:
    """The option of `options` that class `k` stands for (inverse of `answer_class`)."""
    pair = BINARY_CHOICES.get(record.task)
    folded = [o.casefold() for o in options]
    if pair is not None and sorted(folded) == sorted(pair):
        return options[folded.index(pair[k])] if k < len(pair) else None
    return options[k] if k < len(options) else None


def fold_of(item_id: str, folds: int, seed: int) -> int:
    return int(unit_hash(_FOLD_SALT, seed, item_id) * folds)


class HiddenStateEncoder:
    """A frozen causal LM truncated after `layer` blocks; `encode` returns each prompt's hidden
    state at its last token (cached by prompt text, so a question shared by several records or
    datasets is read once)."""

    def __init__(
        self,
        model: str = DEFAULT_SIMULATOR,
        *,
        layer: int = DEFAULT_LAYER,
        cache_dir: str | Path | None = None,
        max_batch_tokens: int = 4096,
        store: str | Path | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from contrail.worker.models import resolve_model

        spec = resolve_model(model, cache_dir)
        self.model_name = spec.name
        self._torch = torch
        self._tok: Any = AutoTokenizer.from_pretrained(str(spec.path))
        lm: Any = AutoModelForCausalLM.from_pretrained(str(spec.path), dtype=torch.float32)
        blocks = lm.model.layers
        if not 1 <= layer <= len(blocks):
            raise ValueError(f"layer must be in 1..{len(blocks)} for {spec.name}, got {layer}")
        # Only the first `layer` blocks run: the rest would cost time for states we never read.
        lm.model.layers = blocks[:layer]
        self._lm: Any = lm.model.eval()
        self.layer = layer
        self.dim = int(lm.config.hidden_size)
        self._max_batch_tokens = max_batch_tokens
        self._cache: dict[str, np.ndarray] = {}
        reader = f"{spec.path.resolve()}|{layer}|{feature_code_version()}"
        self._store = FeatureStore(store, reader) if store else None
        self.seconds = 0.0  # time spent in forward passes (all calls)
        self.stored_seconds = 0.0  # what the states read from `store` cost when computed

    def forget(self) -> None:
        """Empty the per-prompt cache and the timers (a long-lived reader, between jobs)."""
        self._cache.clear()
        self.seconds = self.stored_seconds = 0.0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        start = time.perf_counter()
        todo = sorted({t for t in texts if t not in self._cache})
        if self._store is not None and todo:
            stored, cost = self._store.get(todo)
            self._cache.update(stored)
            self.stored_seconds += cost
            todo = [t for t in todo if t not in self._cache]
        ids = {t: list(self._tok(t, add_special_tokens=False)["input_ids"]) for t in todo}
        todo.sort(key=lambda t: len(ids[t]))
        for batch in token_batches(todo, lambda t: len(ids[t]), self._max_batch_tokens):
            self._run([ids[t] for t in batch], list(batch))
        self.seconds += time.perf_counter() - start
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def _run(self, seqs: list[list[int]], texts: list[str]) -> None:
        start = time.perf_counter()
        from contrail.worker.lm_batches import left_padded  # torch: imported on first use

        torch = self._torch
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        ids, mask, positions = left_padded(seqs, pad)  # every last token sits at index -1
        with torch.inference_mode():
            out = self._lm(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                output_hidden_states=True,
            )
        # hidden_states[layer] is the residual stream after `layer` blocks, before the final norm.
        states = out.hidden_states[self.layer][:, -1].float().numpy()
        rows = {text: row.astype(np.float32) for text, row in zip(texts, states, strict=True)}
        self._cache.update(rows)
        if self._store is not None:
            self._store.put(rows, time.perf_counter() - start)


def feature_code_version() -> str:
    """A digest of what computes a hidden state: this module and the batch builder it uses, and
    the torch and transformers versions. Part of every stored state's key, so a measurement never
    reads states that other code computed."""
    import torch
    import transformers

    from contrail.worker import lm_batches

    h = hashlib.sha256()
    for module_file in (__file__, lm_batches.__file__):
        h.update(Path(module_file).read_bytes())
    h.update(f"{torch.__version__}|{transformers.__version__}".encode())
    return h.hexdigest()[:16]


class FeatureStore:
    """Hidden states kept on disk across runs (a SQLite file keyed by a SHA-256 of the reader,
    which includes `feature_code_version()`, and the prompt), for benchmarks and head training
    that read the same prompts many times."""

    def __init__(self, path: str | Path, reader: str) -> None:
        import sqlite3

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path))
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY, vec BLOB, seconds REAL)"
        )
        self._reader = reader

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self._reader}\x00{text}".encode()).hexdigest()

    def get(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], float]:
        """The stored states of `texts` (those it has), and what computing them once cost."""
        keys = {self._key(t): t for t in texts}
        out: dict[str, np.ndarray] = {}
        cost = 0.0
        names = list(keys)
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, vec, seconds FROM states WHERE key IN ({marks})"
            for key, blob, seconds in self._db.execute(query, chunk):
                out[keys[key]] = np.frombuffer(blob, dtype=np.float32).copy()
                cost += seconds
        return out, cost

    def put(self, rows: dict[str, np.ndarray], seconds: float) -> None:
        """Store `rows`, computed together in `seconds` (shared out evenly)."""
        each = seconds / max(1, len(rows))
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO states VALUES (?, ?, ?)",
                [(self._key(t), v.astype(np.float32).tobytes(), each) for t, v in rows.items()],
            )


class TrainedSimulator:
    """Frozen LM features + a logistic head (module docstring). `predict` trains (or loads) and
    predicts; `info` says how the last `predict` was trained and how long it took.

    Where the head comes from, in order: `train_records` when given (trained once on them);
    else with `training="auto"` (the default) the committed head of the records' task
    (`heads.builtin_head`) when every scorable record is of one task that has one and this
    simulator reads with the model and layer it was trained on, else cross-fitting;
    `training="head"` insists on the committed head (an error when there is none or it belongs to
    another reader); `training="cross-fit"` always cross-fits."""

    kind: Final = "trained"

    def __init__(
        self,
        model: str = DEFAULT_SIMULATOR,
        *,
        layer: int = DEFAULT_LAYER,
        c: float = DEFAULT_C,
        folds: int = DEFAULT_FOLDS,
        seed: int = 0,
        train_records: Sequence[RationaleRecord] | None = None,
        train_source: str | None = None,
        training: Training = "auto",
        encoder: HiddenStateEncoder | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if folds < 2:
            raise ValueError("folds must be at least 2")
        if c <= 0:
            raise ValueError("c must be positive")
        if training not in TRAININGS:
            raise ValueError(f"training must be one of {', '.join(TRAININGS)}")
        self.encoder = encoder or HiddenStateEncoder(model, layer=layer, cache_dir=cache_dir)
        self.c = c
        self.folds = folds
        self.seed = seed
        self.train_records = list(train_records) if train_records is not None else None
        self.train_source = train_source
        self.training = training
        self._checked: set[TaskName] = set()  # committed heads whose reader was checked
        self._info: SimulatorInfo | None = None

    @property
    def name(self) -> str:
        return f"{self.encoder.model_name}@layer{self.encoder.layer}+logistic"

    def info(self) -> SimulatorInfo:
        if self._info is None:
            raise RuntimeError("no predictions made yet")
        return self._info

    def _features(self, kept: Sequence[Kept]) -> dict[Condition, np.ndarray]:
        texts: dict[Condition, list[str]] = {c: [] for c in CONDITIONS}
        for rec, opts in kept:
            for cond, inp in sim_inputs(rec, opts).items():
                texts[cond].append(render_context(inp))
        return {c: self.encoder.encode(texts[c]) for c in CONDITIONS}

    def _fit_predict(
        self,
        train: dict[Condition, np.ndarray],
        y: np.ndarray,
        test: dict[Condition, np.ndarray],
        n_classes: int,
    ) -> dict[Condition, np.ndarray]:
        head = LinearHead.fit(train, y, self.c)
        return {c: head.proba(c, test, n_classes) for c in CONDITIONS}

    def committed_head(self, tasks: set[TaskName]) -> tuple[SimulatorHead | None, str]:
        """The committed head to use for records of `tasks` (None: cross-fit), and why not when
        there is none. Raises `HeadMismatch` when the head belongs to another reader and was
        asked for, or when this reader has its name and layer but reads differently."""
        if self.training == "cross-fit":
            return None, "cross-fitting was asked for"
        task = next(iter(tasks)) if len(tasks) == 1 else None
        head = builtin_head(task) if task is not None else None
        if head is None:
            why = (
                f"no committed head for {task.value}"
                if task is not None
                else "the records are of several tasks"
                if tasks
                else "no scorable records"
            )
            if self.training == "head":
                raise ValueError(f"--simulator-training head: {why}")
            return None, why
        if self.training == "auto" and not head.reads_with(
            self.encoder.model_name, self.encoder.layer
        ):
            return None, (
                f"the committed {head.task.value} head reads {head.model} layer {head.layer}, "
                f"not {self.encoder.model_name} layer {self.encoder.layer}"
            )
        if head.task not in self._checked:
            head.check_reader(self.encoder)
            self._checked.add(head.task)
        return head, ""

    def predict(self, kept: Sequence[Kept]) -> dict[Condition, list[str | None]]:
        """The option predicted in each condition for each (record, options) of `kept`; None
        for a record that `answer_class` cannot place (the caller counts it as skipped)."""
        targets = [answer_class(rec, opts, rec.answer) for rec, opts in kept]
        usable = [i for i, t in enumerate(targets) if t is not None]
        y = np.array([targets[i] for i in usable], dtype=int)
        items = {kept[i][0].item_id for i in usable}
        head, why_not = (
            (None, "")
            if self.train_records is not None
            else (self.committed_head({kept[i][0].task for i in usable}))
        )
        feats = self._features([kept[i] for i in usable])
        n_classes = max((len(kept[i][1]) for i in usable), default=2)
        start = time.perf_counter()
        if self.train_records is not None:
            train_kept = self._train_kept(items)
            n_classes = max(n_classes, *(len(o) for _, o in train_kept))
            train_feats = self._features(train_kept)
            train_y = np.array([answer_class(r, o, r.answer) for r, o in train_kept], dtype=int)
            start = time.perf_counter()
            probs = self._fit_predict(train_feats, train_y, feats, n_classes)
            self._info = self._make_info(
                training=f"trained once on {self.train_source or 'the given training records'} "
                "(records of evaluated items left out)",
                records=len(train_kept),
                items=len({r.item_id for r, _ in train_kept}),
                start=start,
            )
        elif head is not None:
            probs = {c: head.head.proba(c, feats, n_classes) for c in CONDITIONS}
            self._info = self._head_info(head, start)
        else:
            if len(items) < MIN_TRAIN_RECORDS:
                raise ValueError(
                    f"cross-fitting a trained simulator needs at least {MIN_TRAIN_RECORDS} "
                    f"scorable items, got {len(items)} ({why_not}): pass training records or "
                    "use the zero-shot simulator"
                )
            probs = self._crossfit(feats, y, [kept[i][0].item_id for i in usable], n_classes)
            self._info = self._make_info(
                training=f"cross-fitted on the evaluated records ({why_not}): {self.folds} folds "
                "by item (SHA-256 of seed and item id), each fold predicted by a head trained on "
                "the other folds",
                records=len(usable),
                items=len(items),
                start=start,
                folds=self.folds,
            )
        out: dict[Condition, list[str | None]] = {c: [None] * len(kept) for c in CONDITIONS}
        for j, i in enumerate(usable):
            rec, opts = kept[i]
            for c in CONDITIONS:
                out[c][i] = option_of_class(rec, opts, int(np.argmax(probs[c][j])))
        return out

    def _make_info(
        self, *, training: str, records: int, items: int, start: float, folds: int | None = None
    ) -> SimulatorInfo:
        return SimulatorInfo(
            name=self.name,
            kind="trained",
            model=self.encoder.model_name,
            layer=self.encoder.layer,
            head=f"logistic regression (scikit-learn lbfgs, L2, C={self.c}) on slot features",
            training=training,
            train_records=records,
            train_items=items,
            folds=folds,
            seed=self.seed,
            feature_seconds=round(self.encoder.seconds, 2),
            train_seconds=round(time.perf_counter() - start, 2),
        )

    def _head_info(self, head: SimulatorHead, start: float) -> SimulatorInfo:
        m = head.meta
        return SimulatorInfo(
            name=self.name,
            kind="trained",
            model=self.encoder.model_name,
            layer=self.encoder.layer,
            head=f"committed {head.task.value} head (logistic regression, scikit-learn lbfgs, L2, "
            f"C={m['c']}) on slot features; sha256 {head.sha256[:16]}",
            training=f"trained once by scripts/train_las_heads.py on {m['train_source']}",
            train_records=int(m["train_records"]),
            train_items=int(m["train_items"]),
            seed=int(m["seed"]),
            feature_seconds=round(self.encoder.seconds, 2),
            train_seconds=round(time.perf_counter() - start, 2),
            head_train_seconds=float(m["train_seconds"]),
        )

    def _crossfit(
        self, feats: dict[Condition, np.ndarray], y: np.ndarray, item_ids: list[str], n_classes: int
    ) -> dict[Condition, np.ndarray]:
        fold = np.array([fold_of(i, self.folds, self.seed) for i in item_ids], dtype=int)
        probs = {c: np.zeros((len(item_ids), n_classes)) for c in CONDITIONS}
        for k in range(self.folds):
            test = fold == k
            if not test.any():
                continue
            part = self._fit_predict(
                {c: f[~test] for c, f in feats.items()},
                y[~test],
                {c: f[test] for c, f in feats.items()},
                n_classes,
            )
            for c in CONDITIONS:
                probs[c][test] = part[c]
        return probs

    def _train_kept(self, held_out: set[str]) -> list[Kept]:
        from contrail.distill.las import record_options

        assert self.train_records is not None
        kept: list[Kept] = []
        for rec in self.train_records:
            if rec.error is not None or rec.item_id in held_out:
                continue
            opts = record_options(rec)
            if opts is not None and answer_class(rec, opts, rec.answer) is not None:
                kept.append((rec, opts))
        if len(kept) < MIN_TRAIN_RECORDS:
            raise ValueError(
                f"the training records hold {len(kept)} usable records of items not evaluated; "
                f"at least {MIN_TRAIN_RECORDS} are needed"
            )
        return kept


SimulatorKind = Literal["trained", "zero-shot"]  # the `--simulator-kind` choices

__all__ = [
    "DEFAULT_C",
    "DEFAULT_FOLDS",
    "DEFAULT_LAYER",
    "TRAININGS",
    "FeatureStore",
    "HiddenStateEncoder",
    "SimulatorKind",
    "TrainedSimulator",
    "Training",
    "answer_class",
    "fold_of",
    "option_of_class",
]
