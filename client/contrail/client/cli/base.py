"""What every command shares: exit codes, the two exceptions a command raises, the argument
parser class, lazy imports with install hints, and printing helpers."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from types import ModuleType
from typing import Any, NoReturn, TextIO

import pydantic

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_JOB_NOT_COMPLETED = 3
EXIT_WAIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130
# `contrail serve worker` only: its engine stalled (no decoding step for CONTRAIL_ENGINE_STALL_S);
# it gave its shards back. EX_TEMPFAIL of sysexits.h: a restart is the remedy.
EXIT_ENGINE_STALLED = 75


class UsageError(Exception):
    """A mistake of the user's: printed without a traceback, exit code 2."""


class CommandFailed(Exception):
    """An operation that failed for a reason already explained: exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's usage exit code."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"contrail: error: {message}\n")


def err(message: str) -> None:
    print(f"contrail: {message}", file=sys.stderr)


def lazy(module: str, extra: str) -> ModuleType:
    """Import a heavy module inside a command, with an install hint if it is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise CommandFailed(
            f"this command needs {exc.name!r}, which is not installed: "
            f"pip install 'contrail[{extra}]'"
        ) from exc


def print_json(obj: pydantic.BaseModel | Any, out: TextIO | None = None) -> None:
    if isinstance(obj, pydantic.BaseModel):
        text = obj.model_dump_json(indent=2, by_alias=True)
    else:
        text = json.dumps(obj, indent=2, ensure_ascii=False)
    print(text, file=out or sys.stdout)


def fmt_time(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
