"""Option groups shared by several commands (also used by the server-side command plugins):
connection, decoding settings, waiting, JSON output, task names."""

from __future__ import annotations

import argparse
from typing import Any

import httpx

from contrail.client._base import ENV_API_KEY, ENV_BASE_URL
from contrail.client._client import Client
from contrail.client.cli.base import Parser
from contrail.client.types import DecodingMode, DecodingSettings, Perturbation, TaskName


def client_options() -> Parser:
    p = Parser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--base-url",
        default=None,
        help=f"API base URL (default ${ENV_BASE_URL}, else http://127.0.0.1:8000)",
    )
    g.add_argument("--api-key", default=None, help=f"API key (default ${ENV_API_KEY})")
    g.add_argument(
        "--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)"
    )
    g.add_argument(
        "--max-retries", type=int, default=2, help="retries on connection errors, 429, 5xx"
    )
    return p


def decoding_options() -> Parser:
    p = Parser(add_help=False)
    g = p.add_argument_group("decoding (defaults: contrastive, wrong, lambda 0.5, 128 tokens)")
    g.add_argument("--mode", choices=[m.value for m in DecodingMode], default=None)
    g.add_argument(
        "--perturbation",
        choices=[m.value for m in Perturbation],
        default=None,
        help="how the contrast context perturbs the answer",
    )
    g.add_argument(
        "--lambda", dest="lam", type=float, default=None, help="contrast weight in [0, 1)"
    )
    g.add_argument("--alpha", type=float, default=None, help="plausibility cut-off (0 = off)")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument(
        "--counterfactual-fraction",
        type=float,
        default=None,
        help="fraction of items that also get a rationale for a wrong answer",
    )
    g.add_argument("--num-demonstrations", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--stop", action="append", default=None, help="stop string (repeatable; replaces defaults)"
    )
    return p


_DECODING_FLAGS = (
    ("mode", "mode"),
    ("perturbation", "perturbation"),
    ("lam", "lambda"),
    ("alpha", "alpha"),
    ("temperature", "temperature"),
    ("max_new_tokens", "max_new_tokens"),
    ("counterfactual_fraction", "counterfactual_fraction"),
    ("num_demonstrations", "num_demonstrations"),
    ("seed", "seed"),
    ("stop", "stop"),
)


def decoding_settings(args: argparse.Namespace) -> DecodingSettings:
    given: dict[str, Any] = {}
    for dest, key in _DECODING_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            given[key] = value
    return DecodingSettings.model_validate(given)


def task_arg(value: str) -> str:
    try:
        return TaskName(value.lower()).value
    except ValueError:
        known = ", ".join(t.value for t in TaskName)
        raise argparse.ArgumentTypeError(f"unknown task {value!r} (choose from {known})") from None


def json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait-timeout", type=float, default=None, help="give up after this many seconds"
    )
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: on a terminal)"
    )


def make_client(args: argparse.Namespace) -> Client:
    return Client(
        api_key=args.api_key,
        base_url=args.base_url,
        timeout=httpx.Timeout(args.timeout, connect=min(args.timeout, 5.0)),
        max_retries=args.max_retries,
    )
