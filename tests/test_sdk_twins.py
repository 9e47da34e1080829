"""The sync and async clients are twins: the same resources, methods, parameters (names, kinds,
defaults) and return types, the async side awaitable. Walks both public surfaces and fails on any
difference, so a method added to one twin only, or a parameter renamed in one, is caught here.

The differences that are the design (as in httpx and openai-python) are listed, nothing else:
`close`/`aclose`, and `jobs.list`, which returns a `SyncCursorPage` (iterating it walks every
page) on one side and an `AsyncPaginator` (await it for the first page, `async for` walks every
page) on the other.
"""

from __future__ import annotations

import inspect
from typing import Any

from contrail.client import AsyncClient, Client

RENAMED = {"close": "aclose"}
RETURNS = {"SyncCursorPage[Job]": "AsyncPaginator[Job]"}
# Build a client / a paginator; no I/O when called.
NOT_AWAITED = {("client", "with_options"), ("jobs", "list")}
RESOURCES = ("files", "jobs", "models")


def _methods(obj: Any) -> dict[str, Any]:
    return {
        name: getattr(type(obj), name)
        for name in dir(type(obj))
        if not name.startswith("_") and callable(getattr(type(obj), name))
    }


def _pairs() -> list[tuple[str, Any, Any]]:
    sync, asynchronous = Client(api_key="k"), AsyncClient(api_key="k")
    pairs = [("client", sync, asynchronous)]
    pairs += [(r, getattr(sync, r), getattr(asynchronous, r)) for r in RESOURCES]
    return pairs


def test_both_clients_have_the_same_resources() -> None:
    def resources(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_") and not callable(getattr(cls, n))}

    assert resources(Client) == resources(AsyncClient) >= set(RESOURCES)


def test_every_method_has_its_twin_with_the_same_signature() -> None:
    differences: list[str] = []
    for where, sync, asynchronous in _pairs():
        ours, theirs = _methods(sync), _methods(asynchronous)
        expected = {RENAMED.get(n, n) for n in ours}
        if expected != set(theirs):
            differences.append(f"{where}: sync-only {sorted(expected - set(theirs))}, "
                               f"async-only {sorted(set(theirs) - expected)}")  # fmt: skip
        for name, method in ours.items():
            twin = theirs.get(RENAMED.get(name, name))
            if twin is None:
                continue
            a, b = inspect.signature(method), inspect.signature(twin)
            params = [(p.name, p.kind, p.default, str(p.annotation)) for p in a.parameters.values()]
            twins = [(p.name, p.kind, p.default, str(p.annotation)) for p in b.parameters.values()]
            if params != twins:
                differences.append(f"{where}.{name}: parameters {params} != {twins}")
            returns = str(a.return_annotation)
            want = RETURNS.get(returns, returns.replace("Client", "AsyncClient"))
            want = (
                want.replace("Iterator[", "AsyncIterator[")
                if want.startswith("Iterator[")
                else want
            )
            if str(b.return_annotation) != want:
                differences.append(f"{where}.{name}: returns {returns} / {b.return_annotation}")
            body = inspect.unwrap(twin)  # an async context manager's generator
            is_async = inspect.iscoroutinefunction(body) or inspect.isasyncgenfunction(body)
            if is_async == ((where, name) in NOT_AWAITED):
                differences.append(
                    f"{where}.{name}: the async twin is{'' if is_async else ' not'} async"
                )
    assert differences == [], "\n".join(differences)


def test_raw_response_surfaces_are_twins() -> None:
    """``with_raw_response`` wraps the same methods on both sides, awaitable on the async one."""
    differences: list[str] = []
    for where, sync, asynchronous in _pairs()[1:]:
        ours, theirs = vars(sync.with_raw_response), vars(asynchronous.with_raw_response)
        if set(ours) != set(theirs):
            differences.append(f"{where}: {sorted(ours)} != {sorted(theirs)}")
        for name, wrapped in ours.items():
            plain = getattr(sync, name)
            if inspect.signature(wrapped) != inspect.signature(plain):
                differences.append(f"{where}.with_raw_response.{name}: signature differs")
            if name not in theirs:
                continue
            if not inspect.iscoroutinefunction(theirs[name]):
                differences.append(f"{where}.with_raw_response.{name}: async twin not awaitable")
            if inspect.iscoroutinefunction(wrapped):
                differences.append(f"{where}.with_raw_response.{name}: sync twin is async")
    assert differences == [], "\n".join(differences)


def test_raw_response_wraps_every_single_request_method() -> None:
    """Every method that sends exactly one request has a raw twin; the rest are named here."""
    multi_request = {"jobs": {"wait", "download", "results", "errors"}}
    for where, sync, _ in _pairs()[1:]:
        expected = set(_methods(sync)) - multi_request.get(where, set())
        assert set(vars(sync.with_raw_response)) == expected, where
