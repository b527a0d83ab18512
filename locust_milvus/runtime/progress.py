"""Set-up progress of this process (pre-population, pool embedding), for the web UI's run page to poll.

Set-up can take minutes (a large --prepopulate, a --corpus-pool embedded by a remote provider) while Locust's own
page shows nothing; the steps' counts are kept here as they advance and read by ``webui.py`` (on a worker, sent
to the master in its reports). Nothing here imports Locust: ``store.py`` and ``embeddings.py`` update it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Step:
    """One set-up step: ``done`` of ``total`` ``unit`` so far."""

    name: str
    total: int
    unit: str
    done: int = 0
    state: str = "running"  # running, done, failed
    started_s: float = field(default_factory=time.time)
    updated_s: float = field(default_factory=time.time)

    def advance(self, done: int) -> None:
        self.done = done
        self.updated_s = time.time()

    @property
    def per_s(self) -> float | None:
        elapsed = self.updated_s - self.started_s
        return self.done / elapsed if elapsed > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far."""
        rate = self.per_s
        return (self.total - self.done) / rate if rate else None

    def line(self, width: int = 20) -> str:
        """The terminal's progress bar: ``pre-population [#####.....] 500/1000 documents 50% (900/s, ETA 1 s)``."""
        share = self.done / self.total if self.total else 1.0
        bar = "#" * round(share * width) + "." * (width - round(share * width))
        rate, eta = self.per_s, self.eta_s
        timing = f" ({rate:.0f}/s, ETA {eta:.0f} s)" if rate is not None and eta is not None else ""
        return f"{self.name} [{bar}] {self.done}/{self.total} {self.unit} {share:.0%}{timing}"

    def as_dict(self) -> dict:
        elapsed = self.updated_s - self.started_s
        per_s, eta_s = self.per_s, self.eta_s
        return {"name": self.name, "done": self.done, "total": self.total, "unit": self.unit, "state": self.state,
                "elapsed_s": round(elapsed, 1), "per_s": round(per_s, 1) if per_s is not None else None,
                "eta_s": round(eta_s, 1) if eta_s is not None else None}


class SetupProgress:
    """The steps of the current test's set-up in this process, in the order they began."""

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}
        self.began_s: float | None = None  # when the current (or last) test's set-up began

    def reset(self) -> None:
        """A new test's set-up begins: the previous test's steps are no longer news."""
        self.steps = {}
        self.began_s = time.time()

    @contextmanager
    def step(self, name: str, total: int, unit: str) -> Iterator[Step]:
        """A step that is ``done`` when the block ends and ``failed`` when it raises (so a page never shows a
        failed set-up as still running)."""
        current = self.steps[name] = Step(name, total, unit)
        try:
            yield current
        except BaseException:
            current.state = "failed"
            raise
        else:
            current.state = "done"
        finally:
            current.updated_s = time.time()

    def snapshot(self) -> list[dict]:
        return [s.as_dict() for s in self.steps.values()]


progress = SetupProgress()
