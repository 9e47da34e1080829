"""The trained LAS simulator (the default): a frozen causal LM read at one layer, and a logistic
head trained on records whose rationalised answers it knows, then applied to held-out items only.

This is the protocol of Hase et al. (2020), as SCOTT used it, with one change that makes it fit a
2-core CPU: the simulator's language model stays frozen and only a linear head is trained.

Features. For each record the LM (default SmolLM2-135M, run only up to `layer`, default 16 of
30) reads the three zero-shot prompts of `eval_las.render_context` -- question + rationale,
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

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from contrail.client.types import RationaleRecord
from contrail.core.tasks.perturb import BINARY_CHOICES, unit_hash
from contrail.core.tasks.prompts import shows_choices
from contrail.worker.eval_las import (
    CONDITIONS,
    Condition,
    SimulatorInfo,
    render_context,
    sim_inputs,
)

DEFAULT_LAYER: Final = 16
DEFAULT_C: Final = 0.001
DEFAULT_FOLDS: Final = 5
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
        model: str = "smollm2-135m",
        *,
        layer: int = DEFAULT_LAYER,
        cache_dir: str | Path | None = None,
        max_batch_tokens: int = 4096,
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
        self.seconds = 0.0  # time spent in forward passes (all calls)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        start = time.perf_counter()
        todo = sorted({t for t in texts if t not in self._cache})
        ids = {t: list(self._tok(t, add_special_tokens=False)["input_ids"]) for t in todo}
        todo.sort(key=lambda t: len(ids[t]))
        i = 0
        while i < len(todo):
            j = i + 1
            while j < len(todo) and (j + 1 - i) * len(ids[todo[j]]) <= self._max_batch_tokens:
                j += 1
            self._run([ids[t] for t in todo[i:j]], todo[i:j])
            i = j
        self.seconds += time.perf_counter() - start
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def _run(self, seqs: list[list[int]], texts: list[str]) -> None:
        torch = self._torch
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, seq in enumerate(seqs):  # left padding: every last token sits at position -1
            ids[k, width - len(seq) :] = torch.tensor(seq)
            mask[k, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self._lm(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                output_hidden_states=True,
            )
        # hidden_states[layer] is the residual stream after `layer` blocks, before the final norm.
        states = out.hidden_states[self.layer][:, -1].float().numpy()
        for text, row in zip(texts, states, strict=True):
            self._cache[text] = row.astype(np.float32)


class _Slots:
    """Per-slot standardisation fitted on training rows (see the module docstring)."""

    def __init__(self, q: np.ndarray, r: np.ndarray, qr: np.ndarray) -> None:
        self.stats = [(x.mean(0), x.std(0) + 1e-6) for x in (q, r, qr)]

    def rows(self, cond: Condition, q: np.ndarray, r: np.ndarray, qr: np.ndarray) -> np.ndarray:
        n = q.shape[0]
        parts = []
        present = {"qr": (True, True, True), "q": (True, False, False), "r": (False, True, False)}
        for on, x, (mean, std) in zip(present[cond], (q, r, qr), self.stats, strict=True):
            parts.append((x - mean) / std if on else np.zeros_like(x))
        flags = np.array([[cond != "r", cond != "q"]] * n, dtype=np.float32).reshape(n, 2)
        return np.hstack([*parts, flags])


class TrainedSimulator:
    """Frozen LM features + a logistic head (module docstring). `predict` trains and predicts;
    `info` says how the last `predict` was trained and how long it took."""

    kind: Final = "trained"

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        layer: int = DEFAULT_LAYER,
        c: float = DEFAULT_C,
        folds: int = DEFAULT_FOLDS,
        seed: int = 0,
        train_records: Sequence[RationaleRecord] | None = None,
        train_source: str | None = None,
        encoder: HiddenStateEncoder | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if folds < 2:
            raise ValueError("folds must be at least 2")
        if c <= 0:
            raise ValueError("c must be positive")
        self.encoder = encoder or HiddenStateEncoder(model, layer=layer, cache_dir=cache_dir)
        self.c = c
        self.folds = folds
        self.seed = seed
        self.train_records = list(train_records) if train_records is not None else None
        self.train_source = train_source
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
        from sklearn.linear_model import LogisticRegression

        slots = _Slots(train["q"], train["r"], train["qr"])
        x = np.vstack([slots.rows(c, train["q"], train["r"], train["qr"]) for c in CONDITIONS])
        labels = np.concatenate([y] * len(CONDITIONS))
        seen = np.unique(labels)
        out: dict[Condition, np.ndarray] = {}
        if seen.size < 2:  # one class in training: the head can only say that class
            for c in CONDITIONS:
                probs = np.zeros((test[c].shape[0], n_classes))
                probs[:, int(seen[0])] = 1.0
                out[c] = probs
            return out
        head = LogisticRegression(C=self.c, max_iter=5000).fit(x, labels)
        for c in CONDITIONS:
            probs = np.zeros((test[c].shape[0], n_classes))
            if test[c].shape[0]:
                probs[:, head.classes_] = head.predict_proba(
                    slots.rows(c, test["q"], test["r"], test["qr"])
                )
            out[c] = probs
        return out

    def predict(self, kept: Sequence[Kept]) -> dict[Condition, list[str | None]]:
        """The option predicted in each condition for each (record, options) of `kept`; None
        for a record that `answer_class` cannot place (the caller counts it as skipped)."""
        targets = [answer_class(rec, opts, rec.answer) for rec, opts in kept]
        usable = [i for i, t in enumerate(targets) if t is not None]
        y = np.array([targets[i] for i in usable], dtype=int)
        feats = self._features([kept[i] for i in usable])
        items = {kept[i][0].item_id for i in usable}
        if self.train_records is not None:
            train_kept = self._train_kept(items)
            n_classes = max(len(o) for _, o in [*(kept[i] for i in usable), *train_kept])
            train_feats = self._features(train_kept)
            train_y = np.array([answer_class(r, o, r.answer) for r, o in train_kept], dtype=int)
            start = time.perf_counter()
            probs = self._fit_predict(train_feats, train_y, feats, n_classes)
            n_train, n_train_items = len(train_kept), len({r.item_id for r, _ in train_kept})
            training = (
                f"trained once on {self.train_source or 'the given training records'} "
                "(records of evaluated items left out)"
            )
        else:
            if len(items) < MIN_TRAIN_RECORDS:
                raise ValueError(
                    f"cross-fitting a trained simulator needs at least {MIN_TRAIN_RECORDS} "
                    f"scorable items, got {len(items)}: pass training records or use the "
                    "zero-shot simulator"
                )
            n_classes = max((len(kept[i][1]) for i in usable), default=2)
            start = time.perf_counter()
            probs = self._crossfit(feats, y, [kept[i][0].item_id for i in usable], n_classes)
            n_train, n_train_items = len(usable), len(items)
            training = (
                f"cross-fitted on the evaluated records: {self.folds} folds by item (SHA-256 of "
                "seed and item id), each fold predicted by a head trained on the other folds"
            )
        self._info = SimulatorInfo(
            name=self.name,
            kind="trained",
            model=self.encoder.model_name,
            layer=self.encoder.layer,
            head=f"logistic regression (scikit-learn lbfgs, L2, C={self.c}) on slot features",
            training=training,
            train_records=n_train,
            train_items=n_train_items,
            folds=None if self.train_records is not None else self.folds,
            seed=self.seed,
            feature_seconds=round(self.encoder.seconds, 2),
            train_seconds=round(time.perf_counter() - start, 2),
        )
        out: dict[Condition, list[str | None]] = {c: [None] * len(kept) for c in CONDITIONS}
        for j, i in enumerate(usable):
            rec, opts = kept[i]
            for c in CONDITIONS:
                out[c][i] = option_of_class(rec, opts, int(np.argmax(probs[c][j])))
        return out

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
        from contrail.worker.eval_las import record_options

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
    "HiddenStateEncoder",
    "SimulatorKind",
    "TrainedSimulator",
    "answer_class",
    "fold_of",
    "option_of_class",
]
