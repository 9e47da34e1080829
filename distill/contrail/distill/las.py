"""Leakage-adjusted simulatability (LAS, Hase et al. 2020; docs/METHOD.md section 4).

A *simulator* predicts, for each record, which answer option the rationale was written for from
three inputs: question + rationale (QR), question alone (Q) and rationale alone (R). The target is
the record's `answer` -- the *rationalised* answer: the gold answer for factual records, the wrong
one for counterfactual records (LAS asks whether the rationale lets an observer predict the answer
it argues for, not whether that answer is true).

    leaked(i) = simulator correct from R alone
    gain(G) = mean over records in G of (correct_QR - correct_Q)
    LAS = 1/2 * [ gain(leaked) + gain(not leaked) ]

When one group is empty LAS is the other group's mean difference. Confidence intervals are
percentile bootstraps over records (numpy, seeded), recomputing every statistic on each resample.

The default simulator, `LikelihoodSimulator`, is a causal LM (the default model works offline)
that scores each option by its log-likelihood after a zero-shot prompt:

    Q: <question>                      (QR and Q)
    Answer Choices:                    (QR, Q and R; multiple-choice tasks only)
    (a) <choice> ...
    Explanation: <rationale>           (QR and R)
    A: The answer is                   ("The statement is" for CREAK)

followed by " <option>". Options are the record's choices, its task's binary pair (yes/no,
true/false), or for free-form records the rationalised answer against the gold answer, the
record's contrast answer and the answers of other records of the same item.

A small LM has a prior over the options whatever the input (a preference for "yes", say),
which can bury differences in a constant. `calibration="batch"` (the default;
Zhou et al. 2023, batch calibration) subtracts, per condition, the mean score of each option over
all scored records that share the same option set (at least `MIN_CALIBRATION_GROUP` of them)
before taking the argmax. It uses no labels. `calibration="none"` takes raw scores.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field

from contrail.client.types import RationaleRecord, TaskName
from contrail.core.quality_signals import answer_options
from contrail.core.tasks.prompts import CHOICES_HEADER, format_choices, shows_choices
from contrail.distill.options import DEFAULT_BOOTSTRAP, DEFAULT_SIMULATOR

Condition = Literal["qr", "q", "r"]
CONDITIONS: Final[tuple[Condition, ...]] = ("qr", "q", "r")
Calibration = Literal["batch", "none"]
MIN_CALIBRATION_GROUP: Final = 10


@dataclass(frozen=True)
class SimInput:
    """What the simulator sees in one condition: `question` and/or `rationale`, and the options."""

    task: TaskName
    question: str | None
    rationale: str | None
    options: tuple[str, ...]


class Simulator(Protocol):
    """Scores each option of each input; a higher score means a more likely answer."""

    @property
    def name(self) -> str: ...

    def score(self, inputs: Sequence[SimInput]) -> list[list[float]]: ...


class SimulatorInfo(BaseModel):
    """Which simulator produced a LAS result, how it was trained and what it cost."""

    name: str
    kind: Literal["trained", "zero-shot"]
    model: str = Field(description="the language model it reads with (name or folder name)")
    layer: int | None = Field(default=None, description="hidden layer read (trained only)")
    head: str | None = Field(default=None, description="the trained head (trained only)")
    calibration: str | None = Field(default=None, description="zero-shot only")
    training: str = Field(description="what it was trained on, or 'none (zero-shot)'")
    train_records: int = 0
    train_items: int = 0
    folds: int | None = None
    seed: int | None = None
    feature_seconds: float = Field(description="model forward passes (features or scores)")
    train_seconds: float = Field(default=0.0, description="fitting heads in this run")
    head_train_seconds: float | None = Field(
        default=None,
        description="a committed head: what training it took when it was made (features of the "
        "training records + fitting), in seconds",
    )


@runtime_checkable
class RecordSimulator(Protocol):
    """A simulator that learns from records (`contrail.distill.simulators.TrainedSimulator`):
    it predicts an option per condition for each (record, options), None where it cannot."""

    @property
    def name(self) -> str: ...

    def predict(
        self, kept: Sequence[tuple[RationaleRecord, tuple[str, ...]]]
    ) -> dict[Condition, list[str | None]]: ...

    def info(self) -> SimulatorInfo: ...


def record_options(
    record: RationaleRecord, item_answers: Sequence[str] = ()
) -> tuple[str, ...] | None:
    """The options to predict among, or None when the record offers no alternative."""
    options = answer_options(record)
    if options is not None:
        return tuple(options)
    out = [record.answer]
    for alt in (record.gold_answer, record.decoding.contrast_answer, *item_answers):
        if alt and alt.strip() and alt.casefold() not in {o.casefold() for o in out}:
            out.append(alt)
    return tuple(out) if len(out) >= 2 else None


def sim_inputs(record: RationaleRecord, options: tuple[str, ...]) -> dict[Condition, SimInput]:
    return {
        "qr": SimInput(record.task, record.question, record.rationale, options),
        "q": SimInput(record.task, record.question, None, options),
        "r": SimInput(record.task, None, record.rationale, options),
    }


# ---------------------------------------------------------------------------------------------
# The arithmetic
# ---------------------------------------------------------------------------------------------


class Estimate(BaseModel):
    """A statistic with its percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float


def las_value(qr: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
    """LAS of 0/1 correctness vectors (see the module docstring); nan when there are no records."""
    if qr.size == 0:
        return math.nan
    diff = qr.astype(float) - q.astype(float)
    leaked = r.astype(bool)
    parts = [float(diff[mask].mean()) for mask in (leaked, ~leaked) if mask.any()]
    return float(np.mean(parts))


def _group_diff(qr: np.ndarray, q: np.ndarray, r: np.ndarray, leaked: bool) -> float:
    mask = r.astype(bool) == leaked
    if not mask.any():
        return math.nan
    return float((qr[mask].astype(float) - q[mask].astype(float)).mean())


_STATS: Final[dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]]] = {
    "las": las_value,
    "leak_rate": lambda qr, q, r: float(r.mean()) if r.size else math.nan,
    "acc_qr": lambda qr, q, r: float(qr.mean()) if qr.size else math.nan,
    "acc_q": lambda qr, q, r: float(q.mean()) if q.size else math.nan,
    "acc_r": lambda qr, q, r: float(r.mean()) if r.size else math.nan,
    "gain_leaked": lambda qr, q, r: _group_diff(qr, q, r, True),
    "gain_nonleaked": lambda qr, q, r: _group_diff(qr, q, r, False),
}


def bootstrap(
    qr: Sequence[bool] | np.ndarray,
    q: Sequence[bool] | np.ndarray,
    r: Sequence[bool] | np.ndarray,
    *,
    reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """Every LAS statistic with a percentile-bootstrap CI (records resampled with replacement)."""
    a_qr, a_q, a_r = (np.asarray(x, dtype=bool) for x in (qr, q, r))
    if not a_qr.shape == a_q.shape == a_r.shape:
        raise ValueError("correctness vectors differ in length")
    n = a_qr.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n)) if n and reps else np.empty((0, n), dtype=int)
    tail = (1.0 - level) / 2 * 100
    out: dict[str, Estimate] = {}
    for name, fn in _STATS.items():
        value = fn(a_qr, a_q, a_r)
        samples = np.array([fn(a_qr[i], a_q[i], a_r[i]) for i in idx])
        samples = samples[~np.isnan(samples)]
        if samples.size:
            low, high = np.percentile(samples, [tail, 100 - tail])
        else:
            low = high = math.nan
        out[name] = Estimate(value=_r(value), low=_r(float(low)), high=_r(float(high)))
    return out


def paired_difference(
    a: Sequence[SimulatedRecord],
    b: Sequence[SimulatedRecord],
    *,
    reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """Statistic(a) - statistic(b) over the records both share (matched on item id and tag),
    with a paired percentile bootstrap: one resample of shared records feeds both sides."""
    keyed_b = {(s.item_id, s.tag): s for s in b}
    pairs = [(s, keyed_b[(s.item_id, s.tag)]) for s in a if (s.item_id, s.tag) in keyed_b]
    ca = np.array([p[0].correct for p in pairs], dtype=bool).reshape(-1, 3)
    cb = np.array([p[1].correct for p in pairs], dtype=bool).reshape(-1, 3)
    n = len(pairs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n)) if n and reps else np.empty((0, n), dtype=int)
    tail = (1.0 - level) / 2 * 100
    out: dict[str, Estimate] = {}
    for name in ("las", "acc_qr", "acc_q", "acc_r"):
        fn = _STATS[name]

        def diff(
            i: np.ndarray, fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float] = fn
        ) -> float:
            return fn(ca[i, 0], ca[i, 1], ca[i, 2]) - fn(cb[i, 0], cb[i, 1], cb[i, 2])

        value = diff(np.arange(n))
        samples = np.array([diff(i) for i in idx])
        samples = samples[~np.isnan(samples)]
        low, high = np.percentile(samples, [tail, 100 - tail]) if samples.size else (math.nan,) * 2
        out[name] = Estimate(value=_r(value), low=_r(float(low)), high=_r(float(high)))
    return out


def _r(x: float) -> float:
    return x if math.isnan(x) else round(x, 4)


# ---------------------------------------------------------------------------------------------
# Running a simulator over records
# ---------------------------------------------------------------------------------------------


class SimulatedRecord(BaseModel):
    """One record's simulator predictions (the option predicted in each condition)."""

    item_id: str
    tag: str
    target: str
    options: list[str]
    pred_qr: str
    pred_q: str
    pred_r: str

    @property
    def correct(self) -> tuple[bool, bool, bool]:
        return (self.pred_qr == self.target, self.pred_q == self.target, self.pred_r == self.target)


class LasResult(BaseModel):
    """LAS and the simulator accuracies of one dataset, with bootstrap CIs."""

    simulator: str
    calibration: str
    records: int
    scored: int
    skipped: int
    leaked: int
    las: Estimate
    leak_rate: Estimate
    acc_qr: Estimate
    acc_q: Estimate
    acc_r: Estimate
    gain_leaked: Estimate
    gain_nonleaked: Estimate
    bootstrap_reps: int
    seed: int
    simulator_info: SimulatorInfo | None = None


def calibrate(
    scores: list[list[float]], options: Sequence[tuple[str, ...]], mode: Calibration
) -> list[list[float]]:
    """Batch calibration: subtract each option's mean score within groups of equal option sets."""
    if mode == "none":
        return scores
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, opts in enumerate(options):
        groups[opts].append(i)
    out = [list(s) for s in scores]
    for members in groups.values():
        if len(members) < MIN_CALIBRATION_GROUP:
            continue
        mean = np.mean(np.array([scores[i] for i in members]), axis=0)
        for i in members:
            out[i] = [s - float(m) for s, m in zip(scores[i], mean, strict=True)]
    return out


def simulate(
    records: Sequence[RationaleRecord],
    simulator: Simulator | RecordSimulator,
    *,
    calibration: Calibration = "batch",
) -> tuple[list[SimulatedRecord], int]:
    """Predictions for every scorable record, and how many records were skipped (no options, or
    options a trained simulator cannot place). `calibration` applies to zero-shot scores only."""
    answers_by_item: dict[str, list[str]] = defaultdict(list)
    for rec in records:
        answers_by_item[rec.item_id].append(rec.answer)
    kept: list[tuple[RationaleRecord, tuple[str, ...]]] = []
    for rec in records:
        if rec.error is not None:
            continue
        opts = record_options(rec, answers_by_item[rec.item_id])
        if opts is not None:
            kept.append((rec, opts))
    preds: dict[Condition, list[str | None]]
    if isinstance(simulator, RecordSimulator):
        preds = simulator.predict(kept)
    else:
        preds = {}
        for cond in CONDITIONS:
            inputs = [sim_inputs(rec, opts)[cond] for rec, opts in kept]
            raw = simulator.score(inputs) if inputs else []
            scores = calibrate(raw, [o for _, o in kept], calibration)
            preds[cond] = [
                opts[int(np.argmax(s))] for (_, opts), s in zip(kept, scores, strict=True)
            ]
    out = []
    for i, (rec, opts) in enumerate(kept):
        qr, q, r = (preds[c][i] for c in CONDITIONS)
        if qr is None or q is None or r is None:
            continue
        out.append(
            SimulatedRecord(
                item_id=rec.item_id,
                tag=rec.tag.value,
                target=rec.answer,
                options=list(opts),
                pred_qr=qr,
                pred_q=q,
                pred_r=r,
            )
        )
    return out, len(records) - len(out)


def simulator_info(simulator: Simulator | RecordSimulator, calibration: str) -> SimulatorInfo:
    """The provenance of `simulator`'s latest predictions (a generic one for custom simulators)."""
    if isinstance(simulator, RecordSimulator):
        return simulator.info()
    if isinstance(simulator, LikelihoodSimulator):
        return simulator.info(calibration)
    return SimulatorInfo(
        name=simulator.name,
        kind="zero-shot",
        model=simulator.name,
        calibration=calibration,
        training="none (zero-shot)",
        feature_seconds=0.0,
    )


def las_from_simulated(
    simulated: Sequence[SimulatedRecord],
    *,
    simulator: str,
    calibration: str,
    records: int,
    skipped: int,
    reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    info: SimulatorInfo | None = None,
) -> LasResult:
    correct = np.array([s.correct for s in simulated], dtype=bool).reshape(-1, 3)
    stats = bootstrap(correct[:, 0], correct[:, 1], correct[:, 2], reps=reps, seed=seed)
    return LasResult.model_validate(
        dict(
            simulator=simulator,
            calibration=calibration,
            records=records,
            scored=len(simulated),
            skipped=skipped,
            leaked=int(correct[:, 2].sum()),
            bootstrap_reps=reps,
            seed=seed,
            simulator_info=info,
            **stats,
        )
    )


def evaluate_las(
    records: Sequence[RationaleRecord],
    simulator: Simulator | RecordSimulator,
    *,
    calibration: Calibration = "batch",
    reps: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> tuple[LasResult, list[SimulatedRecord]]:
    """LAS of `records` under `simulator`, and the per-record predictions."""
    simulated, skipped = simulate(records, simulator, calibration=calibration)
    info = simulator_info(simulator, calibration)
    result = las_from_simulated(
        simulated,
        simulator=simulator.name,
        calibration=calibration if info.kind == "zero-shot" else "none",
        records=len(records),
        skipped=skipped,
        reps=reps,
        seed=seed,
        info=info,
    )
    return result, simulated


# ---------------------------------------------------------------------------------------------
# The default simulator: option likelihood under a causal LM
# ---------------------------------------------------------------------------------------------


_Item = TypeVar("_Item")


def token_batches(
    items: Sequence[_Item], length: Callable[[_Item], int], max_tokens: int
) -> Iterator[Sequence[_Item]]:
    """Consecutive runs of `items` (sorted shortest first) whose padded size, count times the
    last one's length, stays within `max_tokens`; an item longer than that goes alone. One
    forward pass per run keeps padding small and memory bounded."""
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and (end + 1 - start) * length(items[end]) <= max_tokens:
            end += 1
        yield items[start:end]
        start = end


def render_context(inp: SimInput) -> str:
    """The zero-shot simulator prompt, up to "A: The answer is" (see the module docstring)."""
    lines: list[str] = []
    if inp.question is not None:
        lines.append(f"Q: {inp.question.strip()}")
    if shows_choices(inp.task, list(inp.options)) and inp.task is not TaskName.GENERIC:
        lines += [CHOICES_HEADER, format_choices(inp.options)]
    if inp.rationale is not None:
        lines.append(f"Explanation: {' '.join(inp.rationale.split())}")
    subject = "statement" if inp.task is TaskName.CREAK else "answer"
    lines.append(f"A: The {subject} is")
    return "\n".join(lines)


class LikelihoodSimulator:
    """Scores " <option>" after `render_context` by its summed log-probability under a causal LM.

    `model` is a name known to `contrail.worker.models.resolve_model` (default
    `DEFAULT_SIMULATOR`, or "tiny") or a local Hugging Face folder. Scores are cached by
    (prompt, options), so the question-only condition is computed once across datasets that
    share items.
    """

    def __init__(
        self,
        model: str = DEFAULT_SIMULATOR,
        *,
        cache_dir: str | Path | None = None,
        max_batch_tokens: int = 4096,
        length_normalize: bool = False,
        device: str = "cpu",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from contrail.worker.models import resolve_model

        spec = resolve_model(model, cache_dir)
        self._name = spec.name
        self._torch = torch
        self._tok: Any = AutoTokenizer.from_pretrained(str(spec.path))
        model_obj: Any = AutoModelForCausalLM.from_pretrained(str(spec.path), dtype=torch.float32)
        self._model: Any = model_obj.to(device)
        self._model.eval()
        self._device = device
        self._max_batch_tokens = max_batch_tokens
        self._length_normalize = length_normalize
        self._cache: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self.seconds = 0.0  # time spent scoring (all calls)

    @property
    def name(self) -> str:
        return self._name

    def info(self, calibration: str) -> SimulatorInfo:
        return SimulatorInfo(
            name=self._name,
            kind="zero-shot",
            model=self._name,
            calibration=calibration,
            training="none (zero-shot: option log-likelihood after a fixed prompt)",
            feature_seconds=round(self.seconds, 2),
        )

    def _ids(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def score(self, inputs: Sequence[SimInput]) -> list[list[float]]:
        start = time.perf_counter()
        try:
            return self._score(inputs)
        finally:
            self.seconds += time.perf_counter() - start

    def _score(self, inputs: Sequence[SimInput]) -> list[list[float]]:
        keys = [(render_context(inp), inp.options) for inp in inputs]
        todo = sorted({k for k in keys if k not in self._cache})
        # Each (context, options) becomes one sequence per option; single-token options share one.
        seqs: list[tuple[tuple[str, tuple[str, ...]], list[int], list[list[int]]]] = []
        for key in todo:
            ctx = self._ids(key[0])
            opts = [self._ids(" " + o.strip()) for o in key[1]]
            seqs.append((key, ctx, opts))
        jobs: list[tuple[int, int, list[int], list[int]]] = []  # (seq idx, option idx, ctx, cont)
        for s, (_, ctx, opts) in enumerate(seqs):
            if all(len(o) == 1 for o in opts):
                jobs.append((s, -1, ctx, []))
            else:
                jobs.extend((s, j, ctx, o) for j, o in enumerate(opts))
        results: dict[tuple[int, int], Any] = {}
        jobs.sort(key=lambda j: len(j[2]) + len(j[3]))
        for batch in token_batches(jobs, lambda j: len(j[2]) + len(j[3]), self._max_batch_tokens):
            self._run(batch, results)
        for s, (key, _, opts) in enumerate(seqs):
            if (s, -1) in results:
                last = results[(s, -1)]
                self._cache[key] = [float(last[o[0]]) for o in opts]
            else:
                self._cache[key] = [float(results[(s, j)]) for j in range(len(opts))]
        return [list(self._cache[k]) for k in keys]

    def _run(
        self,
        batch: Sequence[tuple[int, int, list[int], list[int]]],
        results: dict[tuple[int, int], Any],
    ) -> None:
        """One forward pass over left-padded sequences, keeping only the logits it needs (the
        last `max continuation + 1` positions): the LM head and log-softmax over a 49k vocabulary
        at every position would otherwise cost as much as the rest of the model."""
        from contrail.worker.lm_batches import left_padded  # torch: imported on first use

        torch = self._torch
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        seqs = [ctx + cont for _, _, ctx, cont in batch]
        keep = max(len(cont) for _, _, _, cont in batch) + 1
        ids, mask, positions = left_padded(seqs, pad)
        with torch.inference_mode():
            logits = self._model(
                input_ids=ids.to(self._device),
                attention_mask=mask.to(self._device),
                position_ids=positions.to(self._device),
                logits_to_keep=keep,
            ).logits.float()
            logp = torch.log_softmax(logits, dim=-1).cpu()
        for i, (s, j, _, cont) in enumerate(batch):
            if j == -1:
                results[(s, j)] = logp[i, keep - 1]
                continue
            # Continuation token k sits at kept index keep - len(cont) + k; its logits one earlier.
            rows = torch.arange(keep - len(cont) - 1, keep - 1)
            total = logp[i, rows, torch.tensor(cont)].sum().item()
            results[(s, j)] = total / len(cont) if self._length_normalize else total


__all__ = [
    "CONDITIONS",
    "Estimate",
    "LasResult",
    "LikelihoodSimulator",
    "RecordSimulator",
    "SimInput",
    "SimulatedRecord",
    "Simulator",
    "SimulatorInfo",
    "bootstrap",
    "calibrate",
    "evaluate_las",
    "las_from_simulated",
    "las_value",
    "paired_difference",
    "record_options",
    "render_context",
    "simulate",
    "simulator_info",
    "token_batches",
]
