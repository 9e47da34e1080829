"""The trained simulator's linear head, and the heads committed for the built-in tasks.

A head maps a record's hidden-state features (`simulators`: one slot per prompt, Q / R / Q+R,
each standardised) to answer-class probabilities. `LinearHead` is fitted with scikit-learn's
logistic regression and kept as plain arrays, so a committed head needs neither pickle nor
scikit-learn to be read.

Committed heads (`contrail/distill/data/las_heads/<task>.npz`, made by
`scripts/train_las_heads.py` from each task's training split with its human rationales; sources
and licenses in SOURCES.md beside them) are tied to the reader they were trained on. A head file
records the simulator model's name, the layer, a SHA-256 of the prompts the simulator renders for
a fixed probe record, and the hidden states the reader produced for those prompts.
`SimulatorHead.check_reader` refuses a reader whose name, layer, prompt format or probe states
differ (other weights under the same name, a changed tokenizer), since a head applied to another
reader's states would produce numbers that look valid and mean nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from contrail.client.types import TaskName
from contrail.distill.las import CONDITIONS, Condition, SimInput, render_context

HEAD_FORMAT: Final = 1
HEADS_DIR: Final = "data/las_heads"  # inside the contrail.distill package
# Relative difference of the probe states above which a reader is not the one a head was made
# for: float32 runs of the same weights differ by ~1e-6 across thread counts and CPUs; another
# checkpoint or tokenizer differs by far more than 1e-3.
PROBE_TOLERANCE: Final = 1e-3

# One fixed record per built-in task, rendered in the three conditions: its prompts pin the
# prompt format, and the reader's states on them pin the weights, layer and tokenizer.
_PROBE: Final[dict[TaskName, tuple[str, str, tuple[str, ...]]]] = {
    TaskName.STRATEGYQA: (
        "Could a cat fit inside a teapot?",
        "Cats are about 46 cm long. Teapots are about 20 cm tall.",
        ("yes", "no"),
    ),
    TaskName.CREAK: (
        "The Eiffel Tower is in Rome.",
        "The Eiffel Tower is a landmark in Paris, France.",
        ("true", "false"),
    ),
    TaskName.CSQA: (
        "Where would you keep milk cold?",
        "A refrigerator keeps food cold.",
        ("oven", "refrigerator", "shelf"),
    ),
}


class HeadMismatch(ValueError):
    """A committed head does not belong to this reader (model, layer or prompt format)."""


class Encoder(Protocol):
    """What a head needs of a reader (`simulators.HiddenStateEncoder`)."""

    model_name: str
    layer: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def probe_prompts(task: TaskName) -> list[str]:
    """The probe record's prompts (Q+R, Q, R) as the simulator renders them today."""
    question, rationale, options = _PROBE[task]
    inputs = {
        "qr": SimInput(task, question, rationale, options),
        "q": SimInput(task, question, None, options),
        "r": SimInput(task, None, rationale, options),
    }
    return [render_context(inputs[c]) for c in CONDITIONS]


def prompt_sha256(task: TaskName) -> str:
    return hashlib.sha256("\x00".join(probe_prompts(task)).encode()).hexdigest()


@dataclass(frozen=True)
class LinearHead:
    """Per-slot standardisation + a (multinomial or binary) logistic regression, as arrays."""

    means: np.ndarray  # (3, d): the Q, R and Q+R slots
    stds: np.ndarray  # (3, d)
    coef: np.ndarray  # (1, 3d + 2) for two classes, (k, 3d + 2) for k > 2
    intercept: np.ndarray  # (1,) or (k,)
    classes: np.ndarray  # (k,) the answer classes seen in training, ascending

    @classmethod
    def fit(
        cls, feats: Mapping[Condition, np.ndarray], y: np.ndarray, c: float, max_iter: int = 5000
    ) -> LinearHead:
        """Fit on every condition of every training record (three rows per record: rationale
        dropout in feature space, so one head serves Q+R, Q and R)."""
        from sklearn.linear_model import LogisticRegression

        slots = [feats["q"], feats["r"], feats["qr"]]
        means = np.stack([x.mean(0) for x in slots]).astype(np.float32)
        stds = (np.stack([x.std(0) for x in slots]) + 1e-6).astype(np.float32)
        dim = 3 * means.shape[1] + 2
        labels = np.concatenate([y] * len(CONDITIONS))
        classes = np.unique(labels)
        if classes.size < 2:  # one class in training: the head can only say that class
            return cls(means, stds, np.zeros((1, dim)), np.zeros(1), classes)
        empty = cls(means, stds, np.zeros((1, dim)), np.zeros(1), classes)
        x = np.vstack([empty.rows(cond, feats) for cond in CONDITIONS])
        model = LogisticRegression(C=c, max_iter=max_iter).fit(x, labels)
        return cls(means, stds, model.coef_.copy(), model.intercept_.copy(), model.classes_.copy())

    def rows(self, cond: Condition, feats: Mapping[Condition, np.ndarray]) -> np.ndarray:
        """A condition's feature rows: [z(Q), z(R), z(Q+R), has Q, has R], absent slots zero."""
        present = {"qr": (True, True, True), "q": (True, False, False), "r": (False, True, False)}
        slots: tuple[Condition, ...] = ("q", "r", "qr")
        n = feats["q"].shape[0]
        parts = [
            (feats[slot] - self.means[k]) / self.stds[k] if on else np.zeros((n, self.dim))
            for k, (slot, on) in enumerate(zip(slots, present[cond], strict=True))
        ]
        flags = np.tile(np.array([cond != "r", cond != "q"], dtype=np.float64), (n, 1))
        return np.hstack([*parts, flags])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def proba(
        self, cond: Condition, feats: Mapping[Condition, np.ndarray], n_classes: int
    ) -> np.ndarray:
        """(n, n_classes) probabilities; classes the head never saw get 0."""
        n = feats["q"].shape[0]
        out = np.zeros((n, n_classes))
        if n == 0:
            return out
        if self.classes.size < 2:
            out[:, int(self.classes[0])] = 1.0
            return out
        z = self.rows(cond, feats) @ self.coef.T + self.intercept
        if self.classes.size == 2:  # scikit-learn's binary model: one logit for classes_[1]
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            p = np.stack([1.0 - p1, p1], axis=1)
        else:
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        out[:, self.classes.astype(int)] = p
        return out


@dataclass(frozen=True)
class SimulatorHead:
    """A head with the reader it was trained on and how it was trained (`meta`)."""

    task: TaskName
    head: LinearHead
    probe: np.ndarray  # (3, d): the reader's states on `probe_prompts(task)` at training time
    meta: dict[str, Any]
    sha256: str = ""  # of the file it was read from

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    def reads_with(self, model: str, layer: int) -> bool:
        return (model, layer) == (self.model, self.layer)

    def check_reader(self, encoder: Encoder) -> None:
        """Raise `HeadMismatch` unless `encoder` is the reader this head was trained on."""
        what = (
            f"the committed {self.task.value} head was trained on {self.model} layer {self.layer}"
        )
        if not self.reads_with(encoder.model_name, encoder.layer):
            raise HeadMismatch(
                f"{what}, not on {encoder.model_name} layer {encoder.layer}: cross-fit "
                "(--simulator-training cross-fit) or pass --train-data"
            )
        if prompt_sha256(self.task) != self.meta["prompt_sha256"]:
            raise HeadMismatch(
                f"{what} with another prompt format: retrain it (scripts/train_las_heads.py)"
            )
        states = encoder.encode(probe_prompts(self.task))
        if states.shape != self.probe.shape:
            diff = float("inf")
        else:
            diff = float(np.abs(states - self.probe).max() / (np.abs(self.probe).max() + 1e-9))
        if not diff <= PROBE_TOLERANCE:
            raise HeadMismatch(
                f"{what}, but this {encoder.model_name} reads the probe prompts differently "
                f"(relative difference {diff:.2g}): other weights or tokenizer under the same "
                "name; retrain the head (scripts/train_las_heads.py) or cross-fit"
            )

    # ------------------------------------------------------------------ files
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        h = self.head
        np.savez_compressed(
            buf,
            means=h.means.astype(np.float32),
            stds=h.stds.astype(np.float32),
            coef=h.coef.astype(np.float32),
            intercept=h.intercept.astype(np.float32),
            classes=h.classes.astype(np.int64),
            probe=self.probe.astype(np.float32),
            meta=np.array(json.dumps({**self.meta, "task": self.task.value}, sort_keys=True)),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SimulatorHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != HEAD_FORMAT:
                raise ValueError(f"unsupported head format {meta.get('format')!r}")
            head = LinearHead(
                z["means"], z["stds"], z["coef"], z["intercept"], z["classes"].astype(int)
            )
            return cls(
                TaskName(meta["task"]),
                head,
                z["probe"],
                meta,
                hashlib.sha256(data).hexdigest(),
            )

    @classmethod
    def load(cls, path: Path) -> SimulatorHead:
        return cls.from_bytes(path.read_bytes())


def _head_file(task: TaskName) -> Any:
    return resources.files("contrail.distill").joinpath(HEADS_DIR, f"{task.value}.npz")


def builtin_head(task: TaskName) -> SimulatorHead | None:
    """The committed head of `task`, or None when the package has none."""
    res = _head_file(task)
    return SimulatorHead.from_bytes(res.read_bytes()) if res.is_file() else None


def builtin_head_tasks() -> list[TaskName]:
    return [t for t in TaskName if _head_file(t).is_file()]


__all__ = [
    "HEAD_FORMAT",
    "HeadMismatch",
    "LinearHead",
    "SimulatorHead",
    "builtin_head",
    "builtin_head_tasks",
    "probe_prompts",
    "prompt_sha256",
]
