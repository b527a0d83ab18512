"""Reproducer: stopping Locust while users are mid-call must end the run, every time.

    python bench/stop_stress.py [--runs 100] [--users 30] [--hog 2] [--stop-timeout 0] [--host URI]
                                [--seed N] [--out FILE] [--keep-going] [--checkout DIR]

e.g. ``.venv/bin/python bench/stop_stress.py --runs 12 --hog 2``.

The defect it hunts: when Locust stops users (the ``-t`` time limit, Ctrl-C/SIGINT, SIGTERM) while they wait
inside a sync gRPC call, the process sometimes never exits, logs ``cannot release un-acquired lock`` (a
MilvusException from LangChain's ``delete``), or the stuck-call watchdog logs ``has been in flight for N s, far
past its deadline`` (``stuck=N`` in the ``locust-milvus monitor:`` line). It is a race, so one run proves
little: this runs many short real locust processes one after another, against one embedded Milvus (or
``--host``), with a delete-heavy mix of SyncMilvusUser and AsyncMilvusUser (search 4, add 3, delete 3) so that
every kind of call is in flight at the stop. The stop cycles through three kinds:

- ``time``: ``-t`` of a random 3-8 s (whole seconds: Locust's -t takes no fraction); the stop is the moment
  Locust logs ``--run-time limit reached``;
- ``sigint``: SIGINT (Ctrl-C) a random 3-8 s after ``All users spawned``;
- ``sigterm``: SIGTERM likewise (how CI runners and Kubernetes stop a process).

A run that has not exited ``--stop-timeout`` + 10 s after its stop is a HANG (as is one still running at the
hard cap, 60 s after its launch, stopped or not). Still running 5 s later, its output tail is printed, it gets
SIGABRT (the child runs with PYTHONFAULTHANDLER=1, so it dumps every thread's Python stack into its output) and
then SIGKILL, process group and all, and the next run starts. A run that the project's own shutdown deadline
ended (shutdown.py: ``... exiting with code 5``) is a hang too, also counted as a
forced exit: the safety net caught what would have hung. ``--hog N`` busy-loop processes keep both cores busy,
which widens the race. Per run it counts lock errors, stuck calls (the watchdog's line, or ``stuck=N`` > 0),
Python tracebacks, the exit code, whether the report folder was written (``report written to``) and the seconds
from the stop to the exit. The watchdog speaks only of a call in flight for max(3 x --milvus-timeout, that + 10 s)
= 15 s, longer than these runs' load, so a call that sticks at the stop shows up as a hang rather than as stuck.

``--checkout DIR`` runs another tree's locustfile and package (PYTHONPATH=DIR), e.g. a commit before a fix:
``git archive COMMIT | tar -x -C DIR``.

Each run's output (``output.log``) and report folder stay under a temporary folder, whose path is printed with
those of the failing runs. At the end a Markdown table (per stop kind and in total); ``--out FILE`` writes it
there too. Exit status 1 when any run hung, logged a lock error or a stuck call, else 0. It imports neither
Locust nor gevent (plain threads and subprocesses), and ``run_stress()`` also works from a gevent-patched
process (tests/test_stop_stress.py calls it from pytest).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("time", "sigint", "sigterm")
LOCK_ERROR = "cannot release un-acquired lock"
STUCK_WARNING = "far past its deadline"
TRACEBACK = "Traceback (most recent call last)"
REPORT_WRITTEN = "report written to"
SPAWNED = "All users spawned"
TIME_LIMIT = "--run-time limit reached"
FORCED_EXIT = "exiting with code 5. Its report may be missing"  # runtime/shutdown.py's deadline ended the run
MONITOR = re.compile(r"locust-milvus monitor: .*?requests=(\d+) failures=(\d+) unknown_outcome=(\d+) stuck=(\d+)")
GRACE_S = 10.0  # a run must exit within --stop-timeout + this after its stop
KILL_MARGIN_S = 5.0  # a hung run is killed this much later, so that its own shutdown deadline (if any) shows
CAP_S = 60.0  # a run still alive this long after its launch is a hang, stopped or not
DELAY_S = (3.0, 8.0)  # the stop comes this long (uniformly random) into the load


@dataclass
class RunResult:
    index: int
    kind: str  # time | sigint | sigterm
    delay_s: float  # -t, or seconds from "All users spawned" to the signal
    folder: Path
    returncode: int | None = None  # None: killed as a hang (its SIGKILL status is not the run's own)
    hang: bool = False
    forced_exit: bool = False  # ended by its own shutdown deadline (shutdown.py): a hang that the process cut short
    stop_to_exit_s: float | None = None  # None: never stopped (exited early) or hung
    stopped: bool = False  # the stop happened (time limit logged, or signal sent)
    lock_errors: int = 0
    stuck: int = 0
    tracebacks: int = 0
    report_written: bool = False
    requests: int | None = None
    unknown_outcome: int | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        """The defect: a hang, a lock error or a stuck call."""
        return self.hang or self.lock_errors > 0 or self.stuck > 0

    @property
    def nonzero_exit(self) -> bool:
        """Exited by itself with a code other than 0 (a hang's SIGKILL is not counted here)."""
        return self.returncode not in (0, None)

    def line(self, runs: int) -> str:
        head = f"run {self.index + 1:>3}/{runs} {self.kind:<7} at {self.delay_s:4.1f}s:"
        if self.hang and self.forced_exit:
            what = f"HANG (forced exit {self.returncode} by its own deadline)"
        elif self.hang:
            what = "HANG"
        elif self.stop_to_exit_s is not None:
            what = f"exit {self.returncode} {self.stop_to_exit_s:5.2f}s after the stop"
        else:
            what = f"exit {self.returncode} before any stop"
        bits = [what]
        if self.requests is not None:
            bits.append(f"requests={self.requests} unknown={self.unknown_outcome}")
        bits += [f"{label}={n}" for label, n in (("LOCK_ERRORS", self.lock_errors), ("STUCK", self.stuck),
                                                 ("TRACEBACKS", self.tracebacks)) if n]
        if not self.report_written:
            bits.append("NO REPORT")
        if self.note:
            bits.append(self.note)
        return f"{head} {', '.join(bits)}" + (f"  [{self.folder}]" if self.failed or self.tracebacks else "")


@dataclass
class StressResult:
    runs: list[RunResult]
    folder: Path
    settings: dict = field(default_factory=dict)

    def count(self, what: str, kind: str | None = None) -> int:
        rows = [r for r in self.runs if kind is None or r.kind == kind]
        if what == "hangs":
            return sum(r.hang for r in rows)
        if what == "forced_exits":
            return sum(r.forced_exit for r in rows)
        if what == "missing_reports":
            return sum(not r.report_written for r in rows)
        if what == "nonzero_exits":
            return sum(r.nonzero_exit for r in rows)
        return sum(getattr(r, what) for r in rows)

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.runs)

    def failing(self) -> list[RunResult]:
        return [r for r in self.runs if r.failed or r.tracebacks or not r.report_written or r.nonzero_exit]

    def table(self) -> str:
        header = ("| stop | runs | hangs | of which forced exits | lock errors | stuck calls | tracebacks "
                  "| missing reports | non-zero exits | max stop-to-exit s | median stop-to-exit s |")
        lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind in [k for k in KINDS if any(r.kind == k for r in self.runs)] + [None]:
            rows = [r for r in self.runs if kind is None or r.kind == kind]
            waits = [r.stop_to_exit_s for r in rows if r.stop_to_exit_s is not None]
            cells = [kind or "**all**", len(rows)] + [self.count(w, kind) for w in (
                "hangs", "forced_exits", "lock_errors", "stuck", "tracebacks", "missing_reports", "nonzero_exits")]
            cells += [f"{max(waits):.2f}" if waits else "n/a", f"{statistics.median(waits):.2f}" if waits else "n/a"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        s = self.settings
        intro = (f"Stop stress, {s.get('finished', '')}: {len(self.runs)} runs, {s.get('users')} users "
                 f"(SyncMilvusUser and AsyncMilvusUser), {s.get('hog')} CPU hog(s), --stop-timeout "
                 f"{s.get('stop_timeout')}, seed {s.get('seed')}, code {s.get('code', '?')}; a hang is no exit "
                 f"{s.get('grace_s')} s after --stop-timeout. Outputs: {self.folder}")
        return f"{intro}\n\n{self.table()}\n"


# --- one run --------------------------------------------------------------------------------------------------


def _locust_command(checkout: Path) -> list[str]:
    script = Path(sys.executable).with_name("locust")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "locust"]
    # the main locustfile: locustfiles/locustfile.py, or langchain_milvus.py before the rename (d4ced01)
    locustfile = next((f for f in (checkout / "locustfiles" / "locustfile.py",
                                   checkout / "locustfiles" / "langchain_milvus.py") if f.exists()), None)
    if locustfile is None:
        raise FileNotFoundError(f"no locustfiles/locustfile.py or locustfiles/langchain_milvus.py in {checkout}")
    return [*base, "-f", str(locustfile)]


class _Output:
    """A child's combined output, read line by line by a thread (a greenlet when gevent has patched threading),
    written to ``output.log`` as it comes, with the arrival time of the lines we wait for."""

    def __init__(self, stream, log_path: Path) -> None:
        self.lines: list[str] = []
        self.seen: dict[str, float] = {}
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by the thread
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        try:
            for line in stream:
                now = time.monotonic()
                for marker in (SPAWNED, TIME_LIMIT):
                    if marker in line and marker not in self.seen:
                        self.seen[marker] = now
                self.lines.append(line)
                self._log.write(line)
                self._log.flush()
        except (OSError, ValueError):
            pass
        finally:
            self._log.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        return "".join(self.lines)

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own session: its group is its pid
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass


def run_once(index: int, kind: str, delay_s: float, *, uri: str, users: int, stop_timeout: float, folder: Path,
             checkout: Path = ROOT, env: dict | None = None, collection: str = "stopstress",
             grace_s: float = GRACE_S, cap_s: float = CAP_S, extra: tuple[str, ...] = (),
             log=print) -> RunResult:
    """One locust process, stopped by ``kind`` ``delay_s`` into its load; never runs longer than ``cap_s``."""
    folder.mkdir(parents=True, exist_ok=True)
    result = RunResult(index, kind, delay_s, folder)
    cmd = [*_locust_command(checkout), "--headless", "-u", str(users), "-r", str(users), "--host", uri,
           "--collection", collection, "--drop-collection", "--prepopulate", "200", "--milvus-timeout", "5",
           "--search-weight", "4", "--add-weight", "3", "--delete-weight", "3",
           "--reports-dir", str(folder / "reports"), "--loglevel", "INFO", "--stop-timeout", f"{stop_timeout:.0f}s",
           *extra]
    if kind == "time":
        cmd += ["-t", f"{delay_s:.0f}s"]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT on a hang dumps every thread's stack into the output
    # The checkout's own package first (another tree's, e.g. a `git archive` of an older commit, must not run
    # the editable install's locust_milvus)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), child_env.get("PYTHONPATH", "")]))
    (folder / "command.txt").write_text(" ".join(cmd) + "\n")
    launched = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=checkout, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    out = _Output(proc.stdout, folder / "output.log")
    stop_at: float | None = None
    exited_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                exited_at = now
                break
            if stop_at is None:
                if kind == "time":
                    stop_at = out.seen.get(TIME_LIMIT)
                elif SPAWNED in out.seen and now >= out.seen[SPAWNED] + delay_s:
                    proc.send_signal(signal.SIGINT if kind == "sigint" else signal.SIGTERM)
                    stop_at = time.monotonic()
            if stop_at is not None and now > stop_at + stop_timeout + grace_s + KILL_MARGIN_S:
                result.hang, result.note = True, f"no exit {stop_timeout + grace_s + KILL_MARGIN_S:g} s after the stop"
                break
            if now > launched + cap_s:
                result.hang = True
                result.note = f"still running {cap_s:g} s after launch" + ("" if stop_at else ", never stopped")
                break
            time.sleep(0.05)
        if result.hang:
            log(f"--- HANG: run {index + 1} ({kind}), output tail:\n{out.tail()}--- (end of tail)")
            _kill_group(proc, signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack into the output
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:  # the bench itself was interrupted
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=30)
        out.join(timeout=10)
    if not result.hang:
        result.returncode = proc.returncode
    result.stopped = stop_at is not None
    text = out.text()
    if stop_at is not None and exited_at is not None:
        result.stop_to_exit_s = max(0.0, exited_at - stop_at)
        if result.stop_to_exit_s > stop_timeout + grace_s:
            result.hang, result.note = True, f"exited {result.stop_to_exit_s:.1f} s after the stop"
    elif not result.hang and not result.note:
        result.note = "exited before its stop"
    if FORCED_EXIT in text:  # it would have hung: its own deadline ended it (at --stop-timeout + 10 s)
        result.hang = result.forced_exit = True
    result.lock_errors = text.count(LOCK_ERROR)
    result.tracebacks = text.count(TRACEBACK)
    result.report_written = REPORT_WRITTEN in text
    monitors = MONITOR.findall(text)
    if monitors:
        result.requests = sum(int(m[0]) for m in monitors)
        result.unknown_outcome = sum(int(m[2]) for m in monitors)
    result.stuck = max(text.count(STUCK_WARNING), sum(int(m[3]) for m in monitors))
    return result


# --- many runs ------------------------------------------------------------------------------------------------


def _code_version(checkout: Path) -> str:
    """The commit of the code the runs use, and whether its locust_milvus/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "locust_milvus", "locustfiles"], cwd=checkout,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "not a git checkout"
    return f"{head}{' + uncommitted changes in locust_milvus/ or locustfiles/' if dirty else ''}"


def _start_hogs(n: int, env: dict | None) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                             start_new_session=True, env=dict(os.environ if env is None else env))
            for _ in range(n)]


def _stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        if hog.poll() is None:
            hog.kill()
    for hog in hogs:
        hog.wait(timeout=30)


def run_stress(runs: int = 100, users: int = 30, hog: int = 2, host: str | None = None, stop_timeout: float = 0,
               seed: int | None = None, keep_going: bool = True, folder: str | os.PathLike | None = None,
               kinds: tuple[str, ...] = KINDS, delay_s: tuple[float, float] = DELAY_S, env: dict | None = None,
               collection: str = "stopstress", checkout: str | os.PathLike = ROOT, grace_s: float = GRACE_S,
               cap_s: float = CAP_S, log=print) -> StressResult:
    """Run ``runs`` locust processes one after another, stop kinds cycling through ``kinds``; returns their results.

    Without ``host`` one embedded Milvus is started for all runs and stopped at the end. ``keep_going=False``
    stops after the first run that hung or logged a lock error or stuck call. ``env``: the children's environment
    (default: ours). ``folder``: where each run's output and report go (default: a new temporary folder, kept).
    """
    rng = random.Random(seed)
    checkout = Path(checkout).resolve()
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="stop-stress-"))
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"users": users, "hog": hog, "stop_timeout": stop_timeout, "seed": seed, "grace_s": grace_s,
                "code": _code_version(checkout)}
    result = StressResult([], folder, settings)
    log(f"stop stress: {runs} runs, {users} users, {hog} hog(s), --stop-timeout {stop_timeout:g}, seed {seed}, "
        f"code {settings['code']} ({checkout}); outputs in {folder}")
    server = None
    hogs: list[subprocess.Popen] = []
    try:
        if host is None:
            if str(checkout) not in sys.path:  # that tree's server module, as its runs use
                sys.path.insert(0, str(checkout))
            try:
                from locust_milvus.server import EmbeddedMilvus
            except ImportError:  # the package's layout after its split into subpackages
                from locust_milvus.embedded.server import EmbeddedMilvus

            server = EmbeddedMilvus()
            host = server.start()
            log(f"embedded Milvus at {host}")
        hogs = _start_hogs(hog, env)
        for i in range(runs):
            kind = kinds[i % len(kinds)]
            # Locust's -t takes whole seconds; a signal comes at any tenth of a second
            delay = float(rng.randint(int(delay_s[0]), int(delay_s[1]))) if kind == "time" else \
                round(rng.uniform(*delay_s), 1)
            run = run_once(i, kind, delay, uri=host, users=users, stop_timeout=stop_timeout,
                           folder=folder / f"run-{i + 1:03d}-{kind}", checkout=checkout, env=env,
                           collection=collection, grace_s=grace_s, cap_s=cap_s, log=log)
            result.runs.append(run)
            log(run.line(runs))
            if run.failed and not keep_going:
                log("stopping at the first failing run (--keep-going runs them all)")
                break
    finally:
        _stop_hogs(hogs)
        if server is not None:
            server.stop()
    settings["finished"] = datetime.now().strftime("%Y-%m-%d %H:%M")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="locust processes, one after another (default 100)")
    parser.add_argument("--users", type=int, default=30, help="users per run, sync and async half each (default 30)")
    parser.add_argument("--hog", type=int, default=2, help="busy-loop processes during the runs (default 2)")
    parser.add_argument("--stop-timeout", type=int, default=0, help="Locust's --stop-timeout in seconds (default 0)")
    parser.add_argument("--host", help="a running Milvus's URI (default: start the embedded Milvus once)")
    parser.add_argument("--seed", type=int, help="seed of the random stop moments (default: random)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--keep-going", action="store_true",
                        help="run them all; by default stop after the first hang, lock error or stuck call")
    parser.add_argument("--checkout", type=Path, default=ROOT,
                        help="the tree whose locustfile and locust_milvus to run (e.g. a `git archive HEAD` copy); "
                             "default: this one")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 16)
    result = run_stress(runs=args.runs, users=args.users, hog=args.hog, host=args.host, stop_timeout=args.stop_timeout,
                        seed=seed, keep_going=args.keep_going, checkout=args.checkout)
    markdown = result.markdown()
    print()
    print(markdown)
    for run in result.failing():
        print(f"{run.line(len(result.runs))}\n    output: {run.folder / 'output.log'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown)
        print(f"table written to {args.out}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
