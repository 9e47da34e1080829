"""Server-side commands come from the parts that implement them, as plugins.

The CLI lives in the client package, which must not import the server side. `contrail.service`
and `contrail.worker` each register their commands (``up``, ``serve api``; ``serve worker``,
``generate``, ``eval``, ``export``, ``models prepare``) through the entry-point group
``contrail.cli``: a function ``register(registry: CommandRegistry) -> None`` that only builds
argparse parsers (heavy imports stay inside the command functions). A command whose part cannot
be loaded still parses, and answers with the extra to install.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from contrail.client.cli.base import CommandFailed, Parser

PLUGIN_GROUP = "contrail.cli"
log = logging.getLogger("contrail.cli")

# (group or None for top level, command) -> the extra that provides it
SERVER_COMMANDS: dict[tuple[str | None, str], tuple[str, str]] = {
    (None, "up"): ("service", "run the whole stack on this machine (no Docker)"),
    ("serve", "api"): ("service", "run the HTTP API"),
    ("serve", "worker"): ("worker", "run a queue worker"),
    ("serve", "finalizer"): ("worker", "run a finalizer (merges finished jobs; no GPU)"),
    (None, "generate"): ("worker", "decode an input file offline (no server) into a dataset"),
    (None, "eval"): ("worker", "rationale quality of datasets or jobs: signals, LAS"),
    (None, "export"): ("worker", "student-training export of a dataset"),
    ("models", "prepare"): ("worker", "convert and cache a model for the workers"),
}


@dataclass
class CommandRegistry:
    """What a plugin may add to: top-level commands and the `serve` / `models` groups, with the
    shared option groups as argparse parents."""

    commands: Any  # argparse's sub-parsers action (a private type)
    groups: dict[str, Any]
    connection: Parser
    decoding: Parser
    added: set[tuple[str | None, str]] = field(default_factory=set)

    def add(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        self.added.add((None, name))
        parser: argparse.ArgumentParser = self.commands.add_parser(name, **kwargs)
        return parser

    def add_to(self, group: str, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        self.added.add((group, name))
        parser: argparse.ArgumentParser = self.groups[group].add_parser(name, **kwargs)
        return parser


def load_plugins(registry: CommandRegistry) -> None:
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
        except ImportError as exc:  # that part's dependencies are not installed
            log.debug("CLI plugin %s not loaded: %s", ep.name, exc)
            continue
        register(registry)
    for (group, name), (extra, help_text) in SERVER_COMMANDS.items():
        if (group, name) not in registry.added:
            _add_missing(registry, group, name, extra, help_text)


def _add_missing(
    registry: CommandRegistry, group: str | None, name: str, extra: str, help_text: str
) -> None:
    kwargs: dict[str, Any] = {"help": f"{help_text} (needs contrail[{extra}])"}
    p = registry.add(name, **kwargs) if group is None else registry.add_to(group, name, **kwargs)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def missing(args: argparse.Namespace) -> int:
        command = f"{group} {name}" if group else name
        raise CommandFailed(
            f"`contrail {command}` needs the {extra} part: pip install 'contrail[{extra}]'"
        )

    p.set_defaults(func=missing)
