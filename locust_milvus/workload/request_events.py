"""Firing Locust request events, in one place: one event per operation, honest timing, normalised failures."""

from __future__ import annotations

import re

SYNC = "langchain-sync"
ASYNC = "langchain-async"
MODE_NAMES = {SYNC: "sync", ASYNC: "async"}  # how the report and the web UI name the two request types


class OperationFailed(Exception):
    """An operation that returned without raising but did not do its job (e.g. a delete that returned False)."""


_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{12,}\b|\b[0-9a-f]{8}-[0-9a-f-]{27}\b")


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (a gRPC error: ``Type: STATUS: details``), for a log line or an error a
    user reads."""
    described = _grpc_status(exc)
    if described is not None:
        return described
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _grpc_status(exc: BaseException) -> str | None:
    # A gRPC error's str() starts with a line that names no cause ("<_InactiveRpcError of RPC that terminated
    # with:"); its status code and details are the useful part. Milvus errors carry their code in the message.
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            status = code()
            return f"{type(exc).__name__}: {getattr(status, 'name', status)}: {str(details() or '').strip()}"
        except Exception:  # noqa: BLE001 - fall back to the plain message
            return None
    return None


# Locust keeps one row per distinct failure message, for ever; aiolocust caps its error keys for the same reason.
MAX_ERROR_KINDS = 100
_kinds: set[str] = set()


def normalise(exc: BaseException) -> Exception:
    """One clear, low-cardinality message per kind of error, so Locust's failure table groups them.

    Addresses and ids are masked and only the first line is kept; the type name stays in front, and the Milvus
    or gRPC status code with it. After MAX_ERROR_KINDS distinct messages, new ones are counted as one row.
    """
    if isinstance(exc, OperationFailed):
        return exc
    message = _VOLATILE.sub("<id>", one_line(exc))[:240 + len(type(exc).__name__) + 2]
    if message not in _kinds:
        if len(_kinds) >= MAX_ERROR_KINDS:
            return OperationFailed(f"other errors (more than {MAX_ERROR_KINDS} kinds; the first ones are listed)")
        _kinds.add(message)
    return OperationFailed(message)


def fire(environment, request_type: str, name: str, elapsed_s: float, length: int, exc: BaseException | None,
         context: dict | None = None) -> None:
    """Fire exactly one request event through this environment (never the global ``locust.events``).

    ``elapsed_s`` comes from ``time.perf_counter()`` around the call alone; it is reported as float ms.
    ``context`` carries what else the report records of this request (``corrected_ms`` under --target-rps).
    """
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=elapsed_s * 1000.0,
        response_length=length,
        exception=None if exc is None else normalise(exc),
        context=context or {},
    )


class DeadlineExceeded(OperationFailed):
    """An operation whose Milvus side outlasted --milvus-timeout although no layer raised."""


def fire_operation(environment, request_type: str, name: str, elapsed_s: float, length: int,
                   exc: BaseException | None, embeds=(), context: dict | None = None,
                   deadline_s: float | None = None) -> None:
    """An operation's event, after one event per embedding call it made inside (embeddings.EmbedCall: their time
    is taken out of the operation's, so its figure is the Milvus side).

    ``deadline_s`` (--milvus-timeout): an operation whose Milvus side took longer succeeded too late, and is a
    failure whatever layer let it run on: a queue in the client before the call began (gevent's pool once held
    sync deletes 9 to 11 s past a 10 s deadline, unseen), a library that calls Milvus twice, or a retry.
    """
    for e in embeds:
        fire(environment, request_type, e.name, e.elapsed_s, 0, e.exc)
        elapsed_s -= e.elapsed_s
    if exc is None and deadline_s is not None and elapsed_s > deadline_s:
        exc = DeadlineExceeded(f"DeadlineExceeded: the operation took longer than --milvus-timeout ({deadline_s:g} s) "
                               "although no call raised")
    fire(environment, request_type, name, elapsed_s, length, exc, context)
