"""Third-party logs that repeat what a failure event already records: quieted, bounded, and stripped of data.

Every failed operation is already a failed request, with its one-line message, in Locust's failure table and the
report. The client libraries log the same failure again, in full:

- pymilvus logs every failed RPC and every reconnection attempt with a traceback: during an outage, thousands of
  lines a second, which costs the hub its time (and, piped to a full buffer, blocks it). Off below CRITICAL.
- The OpenAI client's HTTP libraries (httpx, httpx2) log every request at INFO. Warnings and errors only.
- langchain-milvus logs each failed insert or upsert at ERROR with its first entity, the whole document text
  (``Failed to insert batch ... First entity data: {...}``): one 70 KB document made a 10 s run's log 18 MB, and
  documents may be private data. Its records pass here through a throttle: one line per distinct message per
  INTERVAL_S, with the count of those not logged, cut to MAX_CHARS characters, without traceback.

``--loglevel DEBUG`` leaves every logger as it is.
"""

from __future__ import annotations

import logging
import re
import time

QUIET_LEVELS = {"pymilvus": logging.CRITICAL, "httpx": logging.WARNING, "httpx2": logging.WARNING}
THROTTLED = ("langchain_milvus",)
INTERVAL_S = 10.0
MAX_CHARS = 240
MAX_KEYS = 200  # distinct messages tracked; beyond, they share one key (a bound on memory, not on lines)
_VARYING = re.compile(r"\d+")


class Throttle(logging.Filter):
    """A handler filter: records of THROTTLED loggers, one per distinct message per INTERVAL_S, cut short."""

    def __init__(self, interval_s: float = INTERVAL_S, clock=time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.last: dict[str, list] = {}  # key -> [when last logged, records not logged since]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(THROTTLED):
            return True
        verdict = getattr(record, "_throttle_verdict", None)
        if verdict is not None:  # the same record reaches every handler: it is judged once
            return verdict
        message = record.getMessage()
        # The message's start, numbers masked: "Failed to insert batch starting at entity: #/#. First entity..."
        key = record.name + ":" + _VARYING.sub("#", message[:100])[:60]
        if key not in self.last and len(self.last) >= MAX_KEYS:
            key = record.name + ":(other messages)"
        now = self.clock()
        seen = self.last.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            record._throttle_verdict = False
            return False
        skipped = seen[1] if seen is not None else 0
        self.last[key] = [now, 0]
        text = message if len(message) <= MAX_CHARS else (
            f"{message[:MAX_CHARS]}... ({len(message) - MAX_CHARS:,} more characters not logged: they may hold "
            "document text; the failure is in the report)")
        if skipped:
            text += f" [{skipped:,} more like this in the last {self.interval_s:g} s not logged]"
        record.msg, record.args = text, None
        record.exc_info = record.exc_text = record.stack_info = None  # one line: the traceback is the failure's
        record._throttle_verdict = True
        return True


_throttle: Throttle | None = None


def install(loglevel: str) -> None:
    """Quiet the client libraries (unless ``loglevel`` is DEBUG) on every handler the root logger has now (Locust
    set them up before init)."""
    global _throttle
    debug = loglevel.upper() == "DEBUG"
    for name, level in QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if debug else level)
    if debug:
        return
    if _throttle is None:
        _throttle = Throttle()
    for handler in logging.getLogger().handlers:
        if _throttle not in handler.filters:
            handler.addFilter(_throttle)
