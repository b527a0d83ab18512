"""The checked options of one run (built by options.settings_from) and the error a bad option raises."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A bad option value; its message is one line saying what is wrong and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """The options of one run, checked; built from ``environment`` when a test starts."""

    uri: str
    token: str
    collection: str
    drop_collection: bool
    consistency_level: str
    timeout: float
    retry_rate_limit: bool
    weights: dict[str, int]
    batch_size: int
    top_k: int
    prepopulate: int
    dim: int
    async_concurrency: int
    filter: str = ""
    metadata_filter: str = "category == 'cat_1'"
    fetch_k: int = 20

    @property
    def call_kwargs(self) -> dict:
        """Keyword arguments for LangChain calls that pass them to pymilvus: the deadline and the retry policy.

        pymilvus retries failed RPCs (and, unless told not to, rate limits) with back-off inside the call;
        given ``timeout`` it stops retrying when the deadline is spent, so a dead server becomes a failure
        after at most about --milvus-timeout instead of minutes of hidden latency.
        """
        return {"timeout": self.timeout, "retry_on_rate_limit": self.retry_rate_limit}
