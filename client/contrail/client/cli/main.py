"""The ``contrail`` command line.

Client commands (``submit``, ``status``, ``wait``, ``results``, ``errors``, ``cancel``,
``delete``, ``resubmit``, ``jobs``, ``models``) talk to an API server through the SDK. ``up``
runs the whole stack on this machine without Docker. The server-side commands (``serve api``,
``serve worker``, ``generate``, ``eval``, ``export``, ``models prepare``) come from the service
and worker parts as plugins (`contrail.client.cli.plugins`), so the client never imports them,
and everything heavy is imported only inside the command that needs it.

Exit codes: 0 success; 1 the API or the operation failed; 2 usage error (bad option, missing
file, invalid setting, no API key); 3 the job ended failed, expired or cancelled; 4 ``wait``
timed out; 130 interrupted.

argparse rather than typer/click: it is in the standard library (the SDK keeps three
dependencies), supports nested subcommands and shared option groups via parent parsers, and its
``--help`` output is all this CLI needs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import pydantic

from contrail.client._base import ENV_API_KEY, ENV_BASE_URL
from contrail.client._exceptions import (
    APIConnectionError,
    APIStatusError,
    ContrailError,
    WaitTimeoutError,
)
from contrail.client.cli import commands
from contrail.client.cli.base import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    CommandFailed,
    Parser,
    UsageError,
    err,
)
from contrail.client.cli.options import client_options, decoding_options
from contrail.client.cli.plugins import CommandRegistry, load_plugins


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("contrail")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="contrail",
        description="Batch rationale generation with contrastive decoding (SCOTT).",
        epilog=(
            "exit codes: 0 ok, 1 API or operation failed, 2 usage error, 3 job failed, expired "
            "or cancelled, 4 wait timed out, 130 interrupted.\n"
            f"environment: {ENV_BASE_URL} (default http://127.0.0.1:8000), {ENV_API_KEY}."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"contrail {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    registry = CommandRegistry(sub, {}, client_options(), decoding_options())
    serve = sub.add_parser("serve", help="run one part of the service (api, worker or finalizer)")
    registry.groups["serve"] = serve.add_subparsers(
        dest="part", metavar="PART", parser_class=Parser
    )
    registry.groups["serve"].required = True
    commands.register(registry)
    load_plugins(registry)
    return parser


def _explain_validation(exc: pydantic.ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ())) or "value"
        parts.append(f"{where}: {e['msg']}")
    return "invalid settings: " + "; ".join(parts)


def _explain_status(exc: APIStatusError) -> str:
    lines = [f"API error {exc.message}"]
    for d in exc.details[:20]:
        where = " ".join(
            x for x in (f"line {d.line}" if d.line else "", d.field or "", d.code or "") if x
        )
        lines.append(f"  {where + ': ' if where else ''}{d.message}")
    if len(exc.details) > 20:
        lines.append(f"  ... and {len(exc.details) - 20} more")
    return "\n".join(lines)


@contextlib.contextmanager
def _sigpipe_safe() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        # `contrail results JOB | head`: stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = EXIT_OK  # a reader that closes our stdout early (`| head`) is not a failure
    try:
        with _sigpipe_safe():
            code = int(args.func(args))
    except UsageError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except pydantic.ValidationError as exc:
        err(_explain_validation(exc))
        return EXIT_USAGE
    except WaitTimeoutError as exc:
        err(str(exc))
        return EXIT_WAIT_TIMEOUT
    except APIStatusError as exc:
        err(_explain_status(exc))
        return EXIT_FAILURE
    except APIConnectionError as exc:
        url = getattr(args, "base_url", None) or os.environ.get(ENV_BASE_URL) or "the API"
        err(f"{exc.message} ({url}). Is the server running (`contrail up`)?")
        return EXIT_FAILURE
    except ContrailError as exc:  # e.g. no API key configured
        err(f"error: {exc}")
        return EXIT_USAGE
    except CommandFailed as exc:
        err(str(exc))
        return exc.code
    except FileNotFoundError as exc:
        err(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    return code


__all__ = ["build_parser", "main"]
