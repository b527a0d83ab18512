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

import faulthandler
import functools
import os
import signal
import sys

import gevent
from gevent.monkey import get_original

FORCED_EXIT_CODE = 5
GRACE_S = 10.0
# What the work before the exit (the --verify check, the master's wait for its workers' verdicts) leaves of the
# time to the deadline: the embedded Milvus stops (up to 3 s), the report is written.
WRITE_MARGIN_S = 5.0

_native_sleep = get_original("time", "sleep")
_native_monotonic = get_original("time", "monotonic")
_start_native_thread = get_original("_thread", "start_new_thread")


def install_sigint_handler() -> None:
    """Ctrl-C as ``KeyboardInterrupt`` in the main greenlet only (call once per process, at init)."""
    main = gevent.get_hub().parent  # the greenlet that runs Locust's main(), waiting for the test to end

    def interrupt() -> None:
        if not main.dead:
            main.throw(KeyboardInterrupt)

    gevent.signal_handler(signal.SIGINT, interrupt)


def arm(stop_timeout: float | None, reason: str) -> None:
    """The process is stopping for good (``reason``): it must exit within --stop-timeout + GRACE_S from now."""
    seconds = float(stop_timeout or 0) + GRACE_S
    _set_deadline(seconds, f"the process did not exit within {seconds:g} s of {reason} (--stop-timeout + "
                           f"{GRACE_S:g} s)")


def expect_stop(run_time: float, stop_timeout: float | None) -> None:
    """A headless run with --run-time has started: Locust's own timer stops it then. If no stop has begun
    GRACE_S after that time (and after the stop's own deadline), the run has stalled where nothing else would
    end it: the same deadline ends it."""
    seconds = float(run_time) + float(stop_timeout or 0) + 2 * GRACE_S
    _set_deadline(seconds, f"the --run-time limit ({run_time:g} s) passed and the run did not end within "
                           f"{seconds - run_time:g} s of it")


_deadline: list = []  # [monotonic deadline, message] of this process, earliest first
_thread_in_pid: int | None = None


def seconds_left_before_writing() -> float | None:
    """Seconds until WRITE_MARGIN_S before this process's deadline (may be negative), or None when none is set."""
    left = seconds_left()
    return None if left is None else left - WRITE_MARGIN_S


def seconds_left() -> float | None:
    """Seconds until this process's deadline ends it, or None when none is set (work that waits on others, such as
    the master waiting for its workers' --verify verdicts, stops waiting in time to finish before it)."""
    if not _deadline or _thread_in_pid != os.getpid():
        return None
    return _deadline[0] - _native_monotonic()


def _set_deadline(seconds: float, message: str) -> None:
    global _thread_in_pid
    at = _native_monotonic() + seconds
    if _deadline and _deadline[0] <= at:
        return  # an earlier deadline stands
    _deadline[:] = [at, message]
    if _thread_in_pid != os.getpid():
        _thread_in_pid = os.getpid()
        _start_native_thread(_expire, ())


def _expire() -> None:
    while (left := _deadline[0] - _native_monotonic()) > 0:
        _native_sleep(min(left, 0.5))
    # Plain writes: logging's locks are gevent's, and the hub may be the thing that is stuck. Every thread's stack
    # goes to stderr first (faulthandler: the main thread's shows where the hub, or a greenlet on it, is stuck).
    message = f"locust-milvus: {_deadline[1]}; exiting with code {FORCED_EXIT_CODE}. Its report may be missing.\n"
    try:
        sys.stderr.flush()
        os.write(2, message.encode())
        faulthandler.dump_traceback(all_threads=True)
    finally:
        os._exit(FORCED_EXIT_CODE)


def stop_csv_writer_with_its_files() -> None:
    """Stop Locust's --csv writer greenlet when its files are closed (call once per process, at init).

    Locust's shutdown() closes the --csv files (https://github.com/locustio/locust/pull/3486) but leaves the
    greenlet that rewrites them every second running. Whatever yields to the hub after that lets it write once more,
    into a closed file: with --processes the master's atexit handler waits for its workers with os.waitpid and
    time.sleep, both cooperative under gevent, and 2 in 20 such runs here (headless, --processes 2, --csv) ended with
    ``ValueError: I/O operation on closed file`` and Locust's "Unhandled exception in greenlet" after the report.
    The files already hold the run's final figures (Locust writes them before closing), so the writer is killed,
    not given a last turn.
    """
    from locust.stats import StatsCSVFileWriter

    if getattr(StatsCSVFileWriter.close_files, "_stops_writer", False):
        return
    write, close = StatsCSVFileWriter.stats_writer, StatsCSVFileWriter.close_files

    @functools.wraps(write)
    def stats_writer(self):
        self._locust_milvus_writer = gevent.getcurrent()
        return write(self)

    @functools.wraps(close)
    def close_files(self):
        writer = getattr(self, "_locust_milvus_writer", None)
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=True, timeout=1.0)  # it waits in gevent.sleep: GreenletExit ends it there
        return close(self)

    close_files._stops_writer = True
    StatsCSVFileWriter.stats_writer, StatsCSVFileWriter.close_files = stats_writer, close_files
