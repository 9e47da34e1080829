"""The service part's commands, registered into the ``contrail`` CLI as a plugin (entry point
``contrail.cli``): ``serve api`` runs the HTTP API with uvicorn; ``up`` runs the whole local stack
(contrail.service.local_stack)."""

from __future__ import annotations

import argparse

from contrail.client.cli.base import EXIT_OK, lazy
from contrail.client.cli.plugins import CommandRegistry
from contrail.service import local_stack


def cmd_serve_api(args: argparse.Namespace) -> int:
    uvicorn = lazy("uvicorn", "service")
    lazy("contrail.service.app", "service")
    uvicorn.run(
        "contrail.service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        proxy_headers=args.proxy_headers,
        timeout_graceful_shutdown=10,
    )
    return EXIT_OK


def register(registry: CommandRegistry) -> None:
    local_stack.register(registry)
    p = registry.add_to(
        "serve",
        "api",
        help="run the HTTP API (uvicorn); settings from CONTRAIL_* environment variables",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--log-level", default="info")
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* headers")
    p.set_defaults(func=cmd_serve_api)
