"""The suite's skip policy (docs/DEVELOPING.md, "Skips"): in CI no test may skip.

The vLLM, oracle and real-data tests skip where their dependency is missing (`importorskip`,
a vLLM that does not import), which is convenient on a laptop and dangerous
in CI: a broken vLLM install would turn the product's central tests into skips and leave the run
green. So when the policy is strict, every skip -- of a test, or of a whole module at collection --
is reported as a failure that names the skip's reason.

Strict when ``CONTRAIL_STRICT_SKIPS`` is 1 (scripts/test.sh sets it), or when ``CI`` is set and
``CONTRAIL_STRICT_SKIPS`` is not 0. Expected failures (xfail) are not skips and are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

STRICT_ENV = "CONTRAIL_STRICT_SKIPS"
_FALSE = {"", "0", "false", "no", "off"}


def strict_skips() -> bool:
    explicit = os.environ.get(STRICT_ENV)
    if explicit is not None:
        return explicit.strip().lower() not in _FALSE
    return os.environ.get("CI", "").strip().lower() not in _FALSE


def _reason(longrepr: Any) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


def _refuse(report: pytest.CollectReport | pytest.TestReport) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"skipped, and skips are failures here ({STRICT_ENV}=1 or CI set): "
        f"{_reason(report.longrepr)}"
    )
    _refused.append(report.nodeid)


_refused: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and strict_skips():
        _refuse(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped and strict_skips():
        _refuse(report)
    return report


def pytest_report_header() -> str:
    return f"skip policy: {'strict (a skip fails the run)' if strict_skips() else 'lenient'}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _refused:
        terminalreporter.write_line(
            f"skip policy: {len(_refused)} skip(s) reported as failures: {', '.join(_refused)}",
            red=True,
        )
