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

    def as_dict(self) -> dict:
        elapsed = self.updated_s - self.started_s
        return {"name": self.name, "done": self.done, "total": self.total, "unit": self.unit, "state": self.state,
                "elapsed_s": round(elapsed, 1), "per_s": round(self.done / elapsed, 1) if elapsed > 0 else None}


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
