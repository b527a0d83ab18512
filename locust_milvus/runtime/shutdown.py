"""Every run ends: Ctrl-C without a traceback, and a deadline on the shutdown that nothing can hold up.

**Ctrl-C.** Python raises ``KeyboardInterrupt`` in whatever code the main thread runs when SIGINT arrives; under
gevent that is often a user's greenlet in the middle of a call, and gevent prints that greenlet's traceback before
Locust's own ``except KeyboardInterrupt`` sees it. The handler here runs in a greenlet of its own (gevent's signal
watcher) and throws ``KeyboardInterrupt`` into the main greenlet only, where Locust waits for the test and handles
it (report, quitting, exit), as it would have without gevent. Locust handles SIGTERM the same way itself.

**The deadline.** Once a locust process begins to stop for good (the --run-time limit in a headless run, Ctrl-C,
SIGTERM, the master's quit), it must write its report and exit within --stop-timeout + 10 s, whatever Milvus or
gRPC does. A native thread (not a greenlet: it must run even if the gevent hub is blocked) waits for that long;
if the process is still there, it says so on stderr and ends it with exit code 5. Nothing in a healthy shutdown
comes near it: it is the last line of defence, not the design (shield.py is the design).
"""

from __future__ import annotations

import os
import signal
import sys

import gevent
from gevent.monkey import get_original

FORCED_EXIT_CODE = 5
GRACE_S = 10.0

_native_sleep = get_original("time", "sleep")
_native_monotonic = get_original("time", "monotonic")
_start_native_thread = get_original("_thread", "start_new_thread")
_armed_in_pid: int | None = None


def install_sigint_handler() -> None:
    """Ctrl-C as ``KeyboardInterrupt`` in the main greenlet only (call once per process, at init)."""
    main = gevent.get_hub().parent  # the greenlet that runs Locust's main(), waiting for the test to end

    def interrupt() -> None:
        if not main.dead:
            main.throw(KeyboardInterrupt)

    gevent.signal_handler(signal.SIGINT, interrupt)


def arm(stop_timeout: float | None, reason: str) -> None:
    """Start the shutdown deadline of this process (once; later calls keep the first deadline)."""
    global _armed_in_pid
    if _armed_in_pid == os.getpid():
        return
    _armed_in_pid = os.getpid()
    seconds = float(stop_timeout or 0) + GRACE_S
    _start_native_thread(_expire, (seconds, reason))


def _expire(seconds: float, reason: str) -> None:
    deadline = _native_monotonic() + seconds
    while (left := deadline - _native_monotonic()) > 0:
        _native_sleep(min(left, 0.5))
    # Plain writes: logging's locks are gevent's, and the hub may be the thing that is stuck.
    message = (f"locust-milvus: the process did not exit within {seconds:g} s of {reason} (--stop-timeout + "
               f"{GRACE_S:g} s); exiting with code {FORCED_EXIT_CODE}. Its report may be missing or incomplete.\n")
    try:
        sys.stderr.flush()
        os.write(2, message.encode())
    finally:
        os._exit(FORCED_EXIT_CODE)
