"""--recall: recall@k of the searches under load, against exact nearest neighbours computed with numpy.

The ground truth is the documents this process wrote (pre-populated, then added, upserted and deleted under
load), whose vectors are kept here as Milvus acknowledged them. A search's truth is the exact top k, by the
collection's metric, over the documents that were certainly visible when it started: acknowledged before it, and
neither being deleted or upserted when it started nor taken for that while it ran (the server may apply such a change
before or after the search's snapshot). Documents in flight are ambiguous: a returned one whose vector is known by
the end is a fair candidate; one still unknown is left out of both sides. In a distributed run each worker knows the
pre-populated documents (read back by set-up's id prefix) and its own writes; another worker's documents are
unknown, and left out of both sides the same way: an exact search returns the true top k, of which the known ones
are exactly the top of the known candidates, so an exact index still scores 1.0. (With Strong or Session
consistency a search is guaranteed to see every acknowledged write; with Bounded or Eventually a fresh document
may rightly be missing, and the report says which level was used.) MMR searches are not nearest-neighbour searches
and are not judged.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Snapshot(NamedTuple):
    """What a search can be held to, taken when it starts: the rows certainly visible, and the change clock."""

    mask: np.ndarray
    clock: int


class GroundTruth:
    """Vectors by id, in a growing matrix with a liveness mask; used from the hub thread only."""

    def __init__(self, dim: int, metric: str) -> None:
        self.metric = metric.upper()
        self.rows: dict[str, int] = {}
        self.vectors = np.zeros((1024, dim), dtype=np.float32)
        self.alive = np.zeros(1024, dtype=bool)
        # Which client wrote each document last: 0 set-up (visible to all), else the mode's (see recall()).
        self.writer = np.zeros(1024, dtype=np.int8)
        # When each row's latest delete or upsert began (self.clock then): a change that begins while a search runs
        # may land before or after the search's snapshot, so the search is not held to that row.
        self.changed = np.zeros(1024, dtype=np.int64)
        self.clock = 0
        self.n = 0
        self.in_flight: set[str] = set()  # ids being deleted or upserted: visible or not, nobody knows

    def put(self, ids: list[str], vectors, writer: int = 0) -> None:
        """Acknowledged adds or upserts (an upsert replaces the vector), written through client ``writer``."""
        for i, v in zip(ids, vectors, strict=True):
            row = self.rows.get(i)
            if row is None:
                if self.n == len(self.alive):
                    self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
                    self.alive = np.concatenate([self.alive, np.zeros_like(self.alive)])
                    self.writer = np.concatenate([self.writer, np.zeros_like(self.writer)])
                    self.changed = np.concatenate([self.changed, np.zeros_like(self.changed)])
                row = self.rows[i] = self.n
                self.n += 1
            self.vectors[row] = v
            self.alive[row] = True
            self.writer[row] = writer

    def begin(self, ids: list[str]) -> None:
        """A delete or upsert of these ids is about to be sent."""
        self.clock += 1
        self.in_flight.update(ids)
        for i in ids:
            row = self.rows.get(i)
            if row is not None:
                self.changed[row] = self.clock

    def settle(self, ids: list[str]) -> None:
        """That delete or upsert has ended (acknowledged or not)."""
        self.in_flight.difference_update(ids)

    def remove(self, ids: list[str]) -> None:
        """Acknowledged deletes."""
        for i in ids:
            row = self.rows.get(i)
            if row is not None:
                self.alive[row] = False

    def visible(self) -> Snapshot:
        """The rows certainly visible to a search starting now (taken when it starts)."""
        mask = self.alive[: self.n].copy()
        for i in self.in_flight:
            row = self.rows.get(i)
            if row is not None:
                mask[row] = False
        return Snapshot(mask, self.clock)

    def _scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Higher is nearer, for every metric."""
        v = self.vectors[rows]
        if self.metric == "IP":
            return v @ query
        if self.metric == "COSINE":
            return (v @ query) / (np.linalg.norm(v, axis=1) * np.linalg.norm(query) + 1e-30)
        return -np.einsum("ij,ij->i", v - query, v - query)  # L2

    def recall(self, query, returned: list[str], k: int, start: Snapshot, reader: int = 0,
               strong: bool = False) -> float | None:
        """|returned ∩ exact top k| / (k minus returned documents that cannot be judged); None: nothing to judge.

        At Session consistency a search is judged only on its own client's acknowledged writes (the sync users
        share one pymilvus client and the async users another) and set-up's, flushed before the load; unless the
        level is Strong, the other client's recent writes are left ambiguous. That is stricter than needed with
        pymilvus 3.0.2, whose Session timestamp is one per process (client/cache.py, GlobalCache.collection_ts,
        shared by every client of a server and collection), but it costs only judged documents, never a wrong
        verdict, and holds for any client library that keeps it per client.
        """
        query = np.asarray(query, dtype=np.float32)
        visible = start.mask & (self.changed[: len(start.mask)] <= start.clock)  # not changed while it ran
        if reader and not strong:
            writers = self.writer[: len(visible)]
            visible = visible & ((writers == 0) | (writers == reader))
        # The candidates, as a mask over every row known now: the visible ones, plus returned documents that were
        # in flight or acknowledged during the search (visible after all). numpy throughout: this runs on the hub.
        candidates = np.zeros(self.n, dtype=bool)
        candidates[: len(visible)] = visible
        unknown = 0
        for i in returned:
            row = self.rows.get(i)
            if row is None:
                unknown += 1  # written by nobody we know of: not judged
            else:
                candidates[row] = True
        rows = np.flatnonzero(candidates)
        want = min(k, len(rows)) - unknown
        if want <= 0:
            return None
        scores = self._scores(query, rows)
        kth = np.partition(scores, len(scores) - want)[len(scores) - want]  # the want-th nearest
        # Ties at the boundary: any document as near as the k-th is as right as the k-th.
        near_enough = set(rows[scores >= kth - 1e-6 * (abs(kth) + 1)].tolist())
        hits = sum(1 for i in returned if self.rows.get(i) in near_enough)
        return min(1.0, hits / want)
