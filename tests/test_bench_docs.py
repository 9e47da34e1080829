"""Every number the measured docs quote comes from a committed results file, measured on committed
code.

The README's "Performance" section, the markdown under docs/bench/ and the report pages listed in
`MEASURED_PAGES` say where their numbers come from with annotations: ``<!-- results:
engine_tiny.json sweep_tiny.json -->`` names results files beside the page (under docs/bench/ for
the README), and every number after it (up to the next annotation) must appear in one of them. Not
checked: code (fenced blocks and inline code: commands, option names), link targets, and targets
written as a comparison ("<= 5%", ">= 10x"). A number quoted with d decimals matches a value that
rounds to it at d decimals (so "0.72" matches 0.7221); a percentage also matches 100x a fraction;
thousands separators are ignored. Every quoted results file records the commit it was measured at
(bench/provenance.py; a text file in a "provenance: {...}" line), with no uncommitted code change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "docs" / "bench"

ANNOTATION = re.compile(r"<!--\s*results:\s*(.*?)\s*-->")
# A number, with its minus sign when the sign follows a space or an opening bracket ("-0.07",
# "[-0.07,"); a number glued to a word or a number by a dash ("top-1", "T5-3B", the "2" of "0-2",
# of "5%-7%") is none of its own.
NUMBER = re.compile(
    r"(?:(?P<neg>(?:^|(?<=[\s(\[,;:=/]))-)|(?<![\w.\-]))"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e-?\d+)?)(?P<unit>%|k|M)?(?![\w])"
)
COMPARISON = re.compile(r"(?:>=|<=|(?<!-)>|<|≥|≤)\s*\+?$")  # "->" is an arrow, not a target
# Report pages outside docs/bench/ whose every figure is traced (their results files lie beside
# them).
MEASURED_PAGES = (
    "docs/quality/STUDENT.md",
    "docs/quality/REPORT.md",
    "docs/quality/VALIDATION.md",
)
# Sections of other pages whose every figure is traced: (page, heading), annotations naming files
# relative to the page's folder.
MEASURED_SECTIONS = (
    ("docs/VIEWER.md", "Measured"),
    ("docs/OPERATIONS.md", "Chaos runs"),
    ("docs/OPERATIONS.md", "Sizing a fleet"),
    ("docs/QUALITY.md", "LAS"),
)


def _section(markdown: str, heading: str) -> str | None:
    """From the "## <heading>..." line to the next "## " heading."""
    match = re.search(rf"^## {re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    return match.group(1) if match else None


def performance_docs() -> dict[str, tuple[str, Path]]:
    """Markdown quoting results, with the folder its annotations name files in: the README's
    Performance section, docs/bench/*.md and the `MEASURED_PAGES`."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Performance\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert match, "README.md has no '## Performance' section"
    docs = {"README.md (Performance)": (match.group(1), BENCH)}
    measured = [REPO / p for p in MEASURED_PAGES if (REPO / p).is_file()]  # else the test below
    pages = [*sorted(BENCH.glob("*.md")), *measured]
    for path in pages:
        docs[str(path.relative_to(REPO))] = (path.read_text(encoding="utf-8"), path.parent)
    for page, heading in MEASURED_SECTIONS:
        path = REPO / page
        section = _section(path.read_text(encoding="utf-8"), heading) if path.is_file() else None
        if section is not None:  # else test_the_measured_pages_exist fails
            docs[f"{page} ({heading})"] = (section, path.parent)
    return docs


def _prose(line: str) -> str:
    line = re.sub(r"`[^`]*`", " ", line)  # inline code
    return re.sub(r"\]\([^)]*\)", "]", line)  # link and image targets


def quoted_numbers(markdown: str) -> Iterator[tuple[int, str, str, tuple[str, ...] | None]]:
    """(line, number as written, its unit: "%", "k", "M" or "", results files in force)."""
    sources: tuple[str, ...] | None = None
    fenced = False
    for lineno, line in enumerate(markdown.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        annotation = ANNOTATION.fullmatch(line.strip())
        if annotation:
            sources = tuple(annotation.group(1).split())
            continue
        if fenced:
            continue
        prose = _prose(line)
        for m in NUMBER.finditer(prose):
            if COMPARISON.search(prose[: m.start()]):
                continue
            yield lineno, _signed(m), m.group("unit") or "", sources


def _signed(m: re.Match[str]) -> str:
    return ("-" if m.group("neg") else "") + m.group("num")


def _numbers_in(value: Any) -> Iterator[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers_in(v)
    elif isinstance(value, str):
        for m in NUMBER.finditer(value):
            yield float(_signed(m).replace(",", ""))


def results_values(path: Path) -> list[float]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return list(_numbers_in(json.loads(text)))
    return list(_numbers_in(text))


def matches(written: str, unit: str, values: list[float]) -> bool:
    plain = written.replace(",", "")
    mantissa, _, exponent = plain.partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    multiple = {"k": 1e3, "M": 1e6}.get(unit, 1.0)  # "100k-line", "1M-line"
    half_unit = 0.5 * 10 ** (int(exponent or 0) - decimals) * multiple * (1 + 1e-9)
    quoted = float(plain) * multiple
    scales = (1.0, 100.0) if unit == "%" else (1.0,)
    return any(abs(v * k - quoted) <= half_unit for v in values for k in scales)


# How a results file that is not JSON (a report's tables, a profile's text) records its run: one
# line, a comment of its format ("# " or "<!-- "), holding bench/provenance.py's git_sha() as JSON.
PROVENANCE_LINE = re.compile(r"^(?:#|<!--)\s*provenance: (\{.*\})", re.M)


def provenance_problem(path: Path) -> str | None:
    """Why a results file does not show committed code, or None."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        line = PROVENANCE_LINE.search(text)
        try:
            data = {"provenance": json.loads(line.group(1))} if line else {}
        except ValueError:
            return f"{path.name}: its provenance line is not JSON"
    bundled = data.get("results")  # engine.json bundles the per-model files in a list
    runs = bundled if isinstance(bundled, list) else [data]
    for run in runs:
        # `versions.contrail` (the engine benchmarks) or `provenance` (the others): both are
        # bench/provenance.py's git_sha()
        contrail = (run.get("versions") or {}).get("contrail") or run.get("provenance")
        if not contrail or not contrail.get("sha"):
            return f"{path.name} does not record the commit it was measured at"
        if "code_dirty" not in contrail:
            return f"{path.name} does not record whether the code was clean (code_dirty)"
        if contrail.get("engine_code_dirty") or contrail.get("code_dirty"):
            return f"{path.name} was measured with uncommitted changes at {contrail['sha'][:10]}"
    return None


def problems(markdown: str, where: str, results_dir: Path = BENCH) -> list[str]:
    found: list[str] = []
    cache: dict[str, list[float]] = {}
    for lineno, written, unit, sources in quoted_numbers(markdown):
        if sources is None:
            found.append(f"{where}:{lineno}: {written} comes before any results annotation")
            continue
        values: list[float] = []
        for name in sources:
            path = results_dir / name
            if not path.is_file():
                found.append(f"{where}:{lineno}: results file {name} does not exist")
                continue
            if name not in cache:
                cache[name] = results_values(path)
                issue = provenance_problem(path)
                if issue:
                    found.append(f"{where}:{lineno}: {issue}")
            values += cache[name]
        if not matches(written, unit, values):
            found.append(f"{where}:{lineno}: {written} is in none of {', '.join(sources)}")
    return found


@pytest.mark.parametrize("where", list(performance_docs()))
def test_every_quoted_number_is_in_its_results_file(where: str) -> None:
    text, results_dir = performance_docs()[where]
    assert problems(text, where, results_dir) == []


def test_the_measured_pages_exist() -> None:
    assert [p for p in MEASURED_PAGES if not (REPO / p).is_file()] == []
    assert [s for s in MEASURED_SECTIONS if f"{s[0]} ({s[1]})" not in performance_docs()] == []


def test_the_check_fails_on_a_number_that_is_in_no_results_file() -> None:
    readme, _ = performance_docs()["README.md (Performance)"]
    # the SmolLM2 pair/paper ratio, nudged by one unit of its last digit
    nudged = readme.replace("| 15.6 |", "| 15.5 |", 1)
    assert nudged != readme
    new = set(problems(nudged, "README")) - set(problems(readme, "README"))
    assert new == {
        f"README:{_line_of(nudged, '| 15.5 |')}: 15.5 is in none of "
        "engine_smollm2-135m.json, engine_tiny.json"
    }
    assert problems("It ran at 12.5 rationales/s.", "doc") == [
        "doc:1: 12.5 comes before any results annotation"
    ]


def _results(tmp_path: Path, dirty: bool) -> Path:
    contrail = {"sha": "0123456789abcdef", "engine_code_dirty": False, "code_dirty": dirty}
    run = {"versions": {"contrail": contrail}, "median_rationales_per_s": 29.6181, "share": 0.0236}
    (tmp_path / "run.json").write_text(json.dumps(run))
    return tmp_path


def test_a_result_that_does_not_say_whether_the_code_was_clean_is_refused(
    tmp_path: Path,
) -> None:
    run = {"versions": {"contrail": {"sha": "0123456789abcdef", "engine_code_dirty": False}}}
    (tmp_path / "run.json").write_text(json.dumps(run | {"value": 3.5}))
    assert problems("<!-- results: run.json -->\n3.5 s", "doc", tmp_path) == [
        "doc:2: run.json does not record whether the code was clean (code_dirty)"
    ]


def test_rounding_units_and_what_is_not_checked(tmp_path: Path) -> None:
    results = _results(tmp_path, dirty=False)
    ok = "<!-- results: run.json -->\n29.6 rationales/s (29.618), 2.4% of the time"
    assert problems(ok, "doc", results) == []
    assert problems(ok.replace("29.6 ", "29.7 "), "doc", results) == [
        "doc:2: 29.7 is in none of run.json"
    ]
    assert problems(ok.replace("2.4%", "2.5%"), "doc", results) == [
        "doc:2: 2.5 is in none of run.json"
    ]
    # code, link targets and targets are not quoted results
    exempt = "<!-- results: run.json -->\n`--items 77` [x](a/77.png) target >= 77x, < 77 MB"
    assert problems(exempt, "doc", results) == []
    assert problems("<!-- results: gone.json -->\n1", "doc", results)[0] == (
        "doc:2: results file gone.json does not exist"
    )


def test_negative_figures_are_checked_with_their_sign(tmp_path: Path) -> None:
    run = {"provenance": {"sha": "0123456789abcdef", "code_dirty": False}, "d": -0.117}
    (tmp_path / "run.json").write_text(json.dumps(run | {"ci": [-0.184, -0.053]}))
    doc = "<!-- results: run.json -->\nLAS -0.117 [-0.184, -0.053]"
    assert problems(doc, "doc", tmp_path) == []
    assert problems(doc.replace("[-0.184", "[-0.185"), "doc", tmp_path) == [
        "doc:2: -0.185 is in none of run.json"
    ]
    # the sign is the figure's: +0.117 is not the file's -0.117
    assert problems(doc.replace("-0.117", "+0.117"), "doc", tmp_path) == [
        "doc:2: 0.117 is in none of run.json"
    ]
    # a dash glued to a number or a word is no minus sign: "top-1", "T5-3B", the 2 of "0-2"
    assert problems("<!-- results: run.json -->\ntop-1 T5-3B", "doc", tmp_path) == []


def test_a_text_result_records_its_provenance_in_a_line(tmp_path: Path) -> None:
    contrail = {"sha": "0123456789abcdef", "engine_code_dirty": False, "code_dirty": False}
    table = "| greedy | 0.028 |\n"
    (tmp_path / "tables.md").write_text(table + f"<!-- provenance: {json.dumps(contrail)} -->\n")
    doc = "<!-- results: tables.md -->\nLAS 0.028"
    assert problems(doc, "doc", tmp_path) == []
    (tmp_path / "tables.md").write_text(table)
    assert problems(doc, "doc", tmp_path) == [
        "doc:2: tables.md does not record the commit it was measured at"
    ]
    (tmp_path / "tables.md").write_text(table + "| provenance: {} |\n")  # not a comment line
    assert problems(doc, "doc", tmp_path) == [
        "doc:2: tables.md does not record the commit it was measured at"
    ]
    (tmp_path / "tables.md").write_text(table + "# provenance: {sha: 1}\n")
    assert problems(doc, "doc", tmp_path) == ["doc:2: tables.md: its provenance line is not JSON"]
    dirty = contrail | {"code_dirty": True}
    (tmp_path / "tables.md").write_text(table + f"# provenance: {json.dumps(dirty)}\n")
    assert problems(doc, "doc", tmp_path) == [
        "doc:2: tables.md was measured with uncommitted changes at 0123456789"
    ]


def test_the_check_fails_on_results_measured_on_uncommitted_code(tmp_path: Path) -> None:
    doc = "<!-- results: run.json -->\n29.6 rationales/s"
    assert problems(doc, "doc", _results(tmp_path, dirty=True)) == [
        "doc:2: run.json was measured with uncommitted changes at 0123456789"
    ]


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)
