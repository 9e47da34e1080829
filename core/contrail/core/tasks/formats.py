"""Task loaders: native dataset formats -> Items, one ItemError per bad line.

Every format is read record by record, so a bad line never stops the others and the API can
validate an upload while it streams (`LineParser`). JSONL is read line by line; a file whose first
non-blank character is "[" (StrategyQA's one JSON list) is read whole and split into its elements,
each keeping the line it starts on. (The API streams JSON arrays, gzip and Parquet itself:
`contrail.service.ingest`.)

Parsing never raises on bad input: JSON is decoded with limits (nesting depth, digits of a
number, finite numbers only, no lone surrogates) and anything a record cannot be turned into an
Item becomes an ItemError naming its line (or record) and field.

Formats (`fmt`):
- ``csqa``: CommonsenseQA v1.0 (answerKey, id, question.stem, question.choices[{label,text}]);
- ``csqa_hf``: CommonsenseQA v1.11 in the Hugging Face layout (id, question, choices{label,text});
- ``strategyqa``: qid, question, answer (bool), facts (rationale = the facts joined by spaces);
- ``creak``: ex_id, sentence (a claim), explanation, label "true"/"false";
- ``qasc``: official QASC JSONL (id, question.stem, 8 question.choices, answerKey, fact1, fact2);
- ``generic``: exactly the `Item` model.
The CSQA formats take CoS-E explanations (joined on id) as the rationale via `explanations`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from contrail.client.types import Item, ItemError, TaskName

FORMATS: Final = ("csqa", "csqa_hf", "strategyqa", "creak", "qasc", "generic")

# Which native formats can feed which task (generic Items feed every task).
TASK_FORMATS: Final[Mapping[TaskName, frozenset[str]]] = {
    TaskName.CSQA: frozenset({"csqa", "csqa_hf", "generic"}),
    TaskName.STRATEGYQA: frozenset({"strategyqa", "generic"}),
    TaskName.CREAK: frozenset({"creak", "generic"}),
    TaskName.QASC: frozenset({"qasc", "generic"}),
    TaskName.GENERIC: frozenset(FORMATS),
}

Source = str | os.PathLike[str] | bytes | Iterable[str] | Iterable[bytes]
"""A path (str or PathLike), a whole file as bytes, or an iterable of lines."""

Explanations = Mapping[str, str] | str | os.PathLike[str] | None

# JSON limits: no real record comes near them, and each guards a failure of the stdlib decoder
# (RecursionError past ~1000 levels, ValueError past 4,300 digits) or of the later encoding.
MAX_DEPTH: Final = 32
MAX_NUMBER_CHARS: Final = 100
_MAX_INT_BITS: Final = 333  # 10**100 < 2**333
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class LineError(Exception):
    """One record could not become an Item: carries the ItemError fields."""

    def __init__(self, code: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


@dataclass
class LoadResult:
    items: list[Item] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    format: str | None = None  # the format used (given or detected); None if none was found


# ---------------------------------------------------------------- field access


def _get(record: Mapping[str, Any], path: str, kind: type | tuple[type, ...] = str) -> Any:
    """The value at a dotted path, checked against `kind`; LineError naming the path otherwise."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise LineError("invalid_item", path, f"missing field {path!r}")
        value = value[part]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise LineError("invalid_item", path, f"field {path!r} must be of type {names}")
    if isinstance(value, str) and not value.strip():
        raise LineError("invalid_item", path, f"field {path!r} must not be empty")
    return value


def _answer_for_key(labels: list[Any], texts: list[Any], key: str, where: str) -> str:
    """The choice text whose label is `key` (CSQA and QASC mark the answer by label)."""
    if key not in labels:
        raise LineError(
            "answer_not_in_choices", "answerKey", f"answerKey {key!r} is not among the {where}"
        )
    return str(texts[labels.index(key)])


def _distinct(texts: list[Any]) -> list[Any]:
    """Choices without repeats, first occurrence kept.

    Real CSQA v1.11 has 24 dev questions with a repeated option (sometimes the answer itself);
    Items need distinct choices, and a repeat of the gold answer must never serve as a 'wrong' one.
    """
    return list(dict.fromkeys(texts))


def _labelled_choices(record: Mapping[str, Any], path: str) -> tuple[list[Any], list[Any]]:
    """Labels and texts of a [{label, text}] list (CSQA v1.0, QASC)."""
    choices = _get(record, path, list)
    labels, texts = [], []
    for i, choice in enumerate(choices):
        if not isinstance(choice, Mapping):
            raise LineError("invalid_item", f"{path}.{i}", "each choice must be {label, text}")
        labels.append(_get(choice, "label"))
        texts.append(_get(choice, "text"))
    return labels, texts


def join_sentences(parts: Iterable[Any]) -> str | None:
    """Facts joined into one rationale, each closed with a full stop if it has no end mark.

    StrategyQA facts often lack the final period ("Albany, GA has around 75,000 people"), and
    plainly joined they run into each other, which a few-shot prompt would teach the teacher.
    """
    sentences = [str(p).strip() for p in parts if str(p).strip()]
    closed = [s if s[-1] in ".!?" else s + "." for s in sentences]
    return " ".join(closed) or None


# ---------------------------------------------------------------- native converters
# Each returns the Item fields of one native record; Item validation happens afterwards.


def _from_csqa(record: Mapping[str, Any]) -> dict[str, Any]:
    labels, texts = _labelled_choices(record, "question.choices")
    return {
        "id": _get(record, "id"),
        "question": _get(record, "question.stem"),
        "choices": _distinct(texts),
        "answer": _answer_for_key(labels, texts, _get(record, "answerKey"), "choice labels"),
    }


def _from_csqa_hf(record: Mapping[str, Any]) -> dict[str, Any]:
    labels = _get(record, "choices.label", list)
    texts = _get(record, "choices.text", list)
    if len(labels) != len(texts):
        raise LineError(
            "invalid_item", "choices", "choices.label and choices.text differ in length"
        )
    return {
        "id": _get(record, "id"),
        "question": _get(record, "question"),
        "choices": _distinct(texts),
        "answer": _answer_for_key(labels, texts, _get(record, "answerKey"), "choice labels"),
    }


def _from_strategyqa(record: Mapping[str, Any]) -> dict[str, Any]:
    facts = _get(record, "facts", list) if "facts" in record else []
    return {
        "id": _get(record, "qid"),
        "question": _get(record, "question"),
        "choices": ["yes", "no"],
        "answer": "yes" if _get(record, "answer", bool) else "no",
        "rationale": join_sentences(facts),
    }


def _from_creak(record: Mapping[str, Any]) -> dict[str, Any]:
    label = _get(record, "label")
    if label not in ("true", "false"):
        raise LineError("answer_not_in_choices", "label", f"label {label!r} is not true/false")
    return {
        "id": _get(record, "ex_id"),
        "question": _get(record, "sentence"),
        "choices": ["true", "false"],
        "answer": label,
        "rationale": record.get("explanation") or None,
    }


def _from_qasc(record: Mapping[str, Any]) -> dict[str, Any]:
    labels, texts = _labelled_choices(record, "question.choices")
    facts = [_get(record, name) for name in ("fact1", "fact2") if name in record]
    return {
        "id": _get(record, "id"),
        "question": _get(record, "question.stem"),
        "choices": _distinct(texts),
        "answer": _answer_for_key(labels, texts, _get(record, "answerKey"), "choice labels"),
        "rationale": join_sentences(facts),
    }


def _from_generic(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict(record)


_CONVERTERS: Final = {
    "csqa": _from_csqa,
    "csqa_hf": _from_csqa_hf,
    "strategyqa": _from_strategyqa,
    "creak": _from_creak,
    "qasc": _from_qasc,
    "generic": _from_generic,
}


def detect_format(record: Any) -> str:
    """Guess the format from one record's keys (generic when nothing native matches)."""
    if not isinstance(record, Mapping):
        return "generic"
    question = record.get("question")
    if isinstance(question, Mapping) and "stem" in question:
        # QASC and CSQA v1.0 share the layout; QASC has facts and 8 choices.
        choices = question.get("choices")
        is_qasc = "fact1" in record or (isinstance(choices, list) and len(choices) == 8)
        return "qasc" if is_qasc else "csqa"
    if isinstance(record.get("choices"), Mapping) and "answerKey" in record:
        return "csqa_hf"
    if "qid" in record and "facts" in record:
        return "strategyqa"
    if "ex_id" in record and "sentence" in record:
        return "creak"
    return "generic"


# ---------------------------------------------------------------- validation


def _validation_error(exc: ValidationError) -> LineError:
    """The first pydantic error as a LineError with its field path."""
    first = exc.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in exc.errors()
    )
    if path is None and "not among the choices" in first["msg"]:
        return LineError("answer_not_in_choices", "answer", message)
    return LineError("invalid_item", path, message)


# ---------------------------------------------------------------- bounded JSON


def _reject_constant(name: str) -> Any:
    raise LineError("invalid_json", None, f"{name} is not valid JSON (numbers must be finite)")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise LineError(
            "number_too_large",
            None,
            f"a number has {len(text)} digits (at most {MAX_NUMBER_CHARS})",
        )
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise LineError(
            "number_too_large",
            None,
            f"a number has {len(text)} characters (at most {MAX_NUMBER_CHARS})",
        )
    value = float(text)
    if not math.isfinite(value):
        raise LineError("number_too_large", None, f"number {text} is out of range")
    return value


def check_value(value: Any) -> None:
    """LineError unless a decoded value keeps the JSON limits: depth, finite numbers of bounded
    size, strings (keys too) that are valid Unicode. Iterative, so any depth is safe to walk."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                _check_unicode(v)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if v.bit_length() > _MAX_INT_BITS:
                raise LineError(
                    "number_too_large", None, f"a number has more than {MAX_NUMBER_CHARS} digits"
                )
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise LineError("invalid_json", None, f"{v} is not valid JSON (not finite)")
        elif isinstance(v, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                raise LineError("too_deep", None, f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(v, Mapping):
                stack.extend((k, depth) for k in v)
                stack.extend((c, depth + 1) for c in v.values())
            else:
                stack.extend((c, depth + 1) for c in v)


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LineError(
            "invalid_json", None, "a string holds a lone surrogate (\\ud800-\\udfff escape)"
        ) from None


def loads_bounded(text: str) -> Any:
    """`json.loads` within the JSON limits; LineError (never another exception) otherwise."""
    try:
        value = _DECODER.decode(text)
    except LineError:
        raise
    except RecursionError:
        raise LineError("too_deep", None, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and any other decoding failure
        raise LineError("invalid_json", None, f"malformed JSON: {exc}") from None
    # Walk the value only when the text could break a limit the decoder does not check.
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    if deep or ("\\u" in text and _SURROGATE_ESCAPE.search(text)):
        check_value(value)
    return value


_DECODER: Final = json.JSONDecoder(
    parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_bounded_float
)


def _record_id(record: Any) -> str | None:
    """The record's own id, whatever the format calls it, for error messages."""
    if isinstance(record, Mapping):
        for key in ("id", "qid", "ex_id"):
            if isinstance(record.get(key), str):
                return str(record[key])
    return None


def load_explanations(path: str | os.PathLike[str]) -> dict[str, str]:
    """CoS-E explanations by question id (field explanation.open-ended)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                out[record["id"]] = record["explanation"]["open-ended"].strip()
    return out


class LineParser:
    """Turns records of one input into Items, remembering ids to flag duplicates.

    `fmt` None detects the format from the first JSON object seen. Usable on its own by the API
    to validate a streamed upload line by line; `track_duplicates=False` leaves duplicate ids to
    the caller (the API checks them in bounded memory). The returned ItemError's `line` is the
    line (or, with ``unit="record"``, the record index) it was given.
    """

    def __init__(
        self,
        task: TaskName,
        fmt: str | None = None,
        explanations: Explanations = None,
        *,
        track_duplicates: bool = True,
    ) -> None:
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.task = task
        self.format = fmt
        self._explanations = _explanation_map(explanations)
        self._seen: set[str] | None = set() if track_duplicates else None

    def parse(self, line: str | bytes, line_no: int) -> Item | ItemError | None:
        """One JSONL line -> Item or ItemError; None for a blank line. Never raises."""
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return ItemError(
                    line=line_no, code="not_utf8", message=f"line {line_no}: not UTF-8: {exc}"
                )
        line = line.lstrip("\ufeff") if line_no == 1 else line
        if not line.strip():
            return None
        try:
            record = loads_bounded(line)
        except LineError as err:
            return ItemError(line=line_no, code=err.code, message=f"line {line_no}: {err.message}")
        return self.parse_record(record, line_no)

    def parse_value(self, record: Any, index: int, unit: str = "record") -> Item | ItemError:
        """A record decoded elsewhere (a JSON-array element, a Parquet row): checked against the
        JSON limits first, then like `parse_record`."""
        try:
            check_value(record)
        except LineError as err:
            return ItemError(line=index, code=err.code, message=f"{unit} {index}: {err.message}")
        return self.parse_record(record, index, unit)

    def parse_record(self, record: Any, line_no: int, unit: str = "line") -> Item | ItemError:
        """One decoded JSON record -> Item or ItemError."""
        try:
            item = self._to_item(record)
        except LineError as err:
            return ItemError(
                item_id=_record_id(record),
                line=line_no,
                field=err.field,
                code=err.code,
                message=f"{unit} {line_no}: {err.message}",
            )
        if self._seen is not None:
            if item.id in self._seen:
                return ItemError(
                    item_id=item.id,
                    line=line_no,
                    field="id",
                    code="duplicate_id",
                    message=f"{unit} {line_no}: id {item.id!r} already appeared in this input",
                )
            self._seen.add(item.id)
        return item

    def _to_item(self, record: Any) -> Item:
        if not isinstance(record, Mapping):
            raise LineError("invalid_item", None, "a record must be a JSON object")
        if self.format is None:
            self.format = detect_format(record)
        if self.format not in TASK_FORMATS[self.task]:
            raise LineError(
                "unsupported_format",
                None,
                f"format {self.format!r} cannot feed task {self.task.value!r}",
            )
        try:
            fields = _CONVERTERS[self.format](record)
        except (TypeError, ValueError, AttributeError) as exc:  # a shape no converter expects
            raise LineError("invalid_item", None, f"unexpected record shape: {exc}") from None
        if self._explanations and fields.get("rationale") is None:
            fields["rationale"] = self._explanations.get(str(fields.get("id")))
        try:
            return Item.model_validate(fields)
        except ValidationError as exc:
            raise _validation_error(exc) from exc


def _explanation_map(explanations: Explanations) -> Mapping[str, str]:
    if explanations is None:
        return {}
    if isinstance(explanations, Mapping):
        return explanations
    return load_explanations(explanations)


def parse_line(
    line: str | bytes,
    task: TaskName,
    fmt: str | None = None,
    *,
    line_no: int = 1,
    explanations: Explanations = None,
) -> Item | ItemError | None:
    """Validate one line on its own (no duplicate check across lines; use LineParser for that)."""
    return LineParser(task, fmt, explanations).parse(line, line_no)


# ---------------------------------------------------------------- whole inputs


def _iter_lines(source: Source) -> Iterator[str | bytes]:
    """Lines of a path (read lazily, as bytes so bad UTF-8 is caught per line) or of an iterable."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            yield from fh
    elif isinstance(source, bytes):
        yield from source.splitlines(keepends=True)
    else:
        yield from source


def _json_array_records(text: str, first_line: int) -> Iterator[tuple[int, Any]]:
    """Elements of one JSON list with the line each starts on; stops at the first syntax error."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    while pos < len(text) and text[pos] != "]":
        line_no = first_line + text.count("\n", 0, pos)
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _ArrayError(line_no, str(exc)) from exc
        yield line_no, record
        pos = skip(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)


class _ArrayError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def _parse_array(
    parser: LineParser, lines: Iterable[str | bytes], first_line: int
) -> Iterator[Item | ItemError]:
    """A JSON-list input (StrategyQA): needs the whole text, then goes element by element."""
    texts: list[str] = []
    for offset, raw in enumerate(lines):
        try:
            texts.append(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except UnicodeDecodeError as exc:
            line_no = first_line + offset
            yield ItemError(line=line_no, code="not_utf8", message=f"not UTF-8: {exc}")
            return
    try:
        for line_no, record in _json_array_records("".join(texts), first_line):
            result = parser.parse_record(record, line_no)
            yield result
            if isinstance(result, ItemError) and result.code == "unsupported_format":
                return
    except _ArrayError as exc:
        yield ItemError(line=exc.line, code="invalid_json", message=f"malformed JSON: {exc}")


def iter_items(parser: LineParser, source: Source) -> Iterator[Item | ItemError]:
    """Items and errors of one input, in input order."""
    lines = _iter_lines(source)
    seen_any = False
    for line_no, raw in enumerate(lines, start=1):
        head = raw.lstrip(b"\xef\xbb\xbf \t\r\n") if isinstance(raw, bytes) else raw.strip()
        if not head:
            continue
        if not seen_any and head[:1] in ("[", b"["):
            yield from _parse_array(parser, _chain_one(raw, lines), line_no)
            return
        seen_any = True
        result = parser.parse(raw, line_no)
        if result is not None:
            yield result
        if isinstance(result, ItemError) and result.code == "unsupported_format":
            return  # the whole input is of the wrong kind: one error, not one per line
    if not seen_any:
        yield ItemError(code="empty_input", message="the input holds no records")


def _chain_one(first: str | bytes, rest: Iterable[str | bytes]) -> Iterator[str | bytes]:
    yield first
    yield from rest


def load_items(
    path_or_lines: Source,
    task: TaskName | str,
    fmt: str | None = None,
    *,
    explanations: Explanations = None,
) -> LoadResult:
    """The single entry point: load one input of `task` in format `fmt` (None: detect)."""
    try:
        task = TaskName(task)
    except ValueError:
        known = ", ".join(t.value for t in TaskName)
        return LoadResult(
            errors=[
                ItemError(
                    field="task",
                    code="unknown_task",
                    message=f"unknown task {task!r}; expected one of {known}",
                )
            ]
        )
    if fmt is not None and fmt not in FORMATS:
        return LoadResult(
            errors=[
                ItemError(
                    field="format",
                    code="unsupported_format",
                    message=f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}",
                )
            ]
        )
    parser = LineParser(task, fmt, explanations)
    result = LoadResult()
    for entry in iter_items(parser, path_or_lines):
        if isinstance(entry, Item):
            result.items.append(entry)
        else:
            result.errors.append(entry)
    result.format = parser.format
    return result
