"""The ``contrail`` command line (see `contrail.client.cli.main`)."""

from contrail.client.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
