"""``--dataset FILE``: the documents of adds, pre-population and queries from a JSONL, CSV or Parquet file.

Each row holds a text (``--text-column``, default ``text``), optional scalar metadata (every other column; the
collection's schema is made from the first row's), and optionally a precomputed vector (``--vector-column``,
default ``vector``; a JSON list in CSV), which pre-population, ``add_embeddings`` and the ``*_by_vector`` searches
then use instead of embedding. A malformed file is refused before load with the line or row at fault.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from locust_milvus.config.settings import ConfigError

RESERVED = ("pk", "text", "vector")
SCALARS = (str, int, float, bool)


class DatasetError(ConfigError):
    """A malformed --dataset file; the message names the file and the line or row."""


@dataclass(frozen=True)
class Dataset:
    path: str
    texts: list[str]
    metadatas: list[dict]
    vectors: list[list[float]] | None

    def __len__(self) -> int:
        return len(self.texts)


def _rows(path: Path):
    """(position, row dict) pairs; position is what a user finds in the file (a line, or a Parquet row)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"--dataset {path}: line {number}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"--dataset {path}: line {number}: expected a JSON object")
                yield f"line {number}", row
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for number, row in enumerate(reader, start=2):  # line 1 is the header
                if None in row or None in row.values():
                    raise DatasetError(f"--dataset {path}: line {number}: has {len(reader.fieldnames or [])} "
                                       "columns in the header but not in this row")
                yield f"line {number}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds
            raise DatasetError(f"--dataset {path}: not a readable Parquet file ({type(e).__name__})") from None
        for number, row in enumerate(table.to_pylist(), start=1):
            yield f"row {number}", row
    else:
        raise DatasetError(f"--dataset {path}: unknown format {suffix!r}: use .jsonl, .csv or .parquet")


# LangChain's Milvus schema makes the text field (and each string metadata field) a VARCHAR of 65,535 bytes; a longer
# value fails its whole insert batch, found here before any write instead.
MAX_VARCHAR_BYTES = 65_535


def load_dataset(path: str, text_column: str = "text", vector_column: str = "vector") -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"--dataset {path}: no such file")
    texts: list[str] = []
    metadatas: list[dict] = []
    vectors: list[list[float]] = []
    keys: set[str] | None = None
    oversized: list[str] = []
    for where, row in _rows(p):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"--dataset {path}: {where}: no text in column {text_column!r}")
        for column, value in row.items():
            if isinstance(value, str) and column != vector_column and len(value) * 4 > MAX_VARCHAR_BYTES \
                    and (size := len(value.encode())) > MAX_VARCHAR_BYTES:
                oversized.append(f"{where} ({column!r}: {size:,} bytes)")
        vector = row.get(vector_column)
        if vector is not None:
            if isinstance(vector, str):
                try:
                    vector = json.loads(vector)
                except json.JSONDecodeError:
                    vector = None
            if not isinstance(vector, list) or not vector or not all(isinstance(x, (int, float)) for x in vector):
                raise DatasetError(f"--dataset {path}: {where}: column {vector_column!r} is not a list of numbers")
            if vectors and len(vector) != len(vectors[0]):
                raise DatasetError(f"--dataset {path}: {where}: vector of dim {len(vector)}, the first had "
                                   f"{len(vectors[0])}")
            vectors.append([float(x) for x in vector])
        elif vectors:
            raise DatasetError(f"--dataset {path}: {where}: no vector in column {vector_column!r} "
                               "(earlier rows had one)")
        metadata = {k: v for k, v in row.items() if k not in (text_column, vector_column)}
        for k, v in metadata.items():
            if k in RESERVED:
                raise DatasetError(f"--dataset {path}: {where}: column {k!r} is reserved by LangChain: rename it")
            if not isinstance(v, SCALARS):
                raise DatasetError(f"--dataset {path}: {where}: column {k!r} is not a string, number or boolean")
        if keys is None:
            keys = set(metadata)
        elif set(metadata) != keys:
            diff = sorted(keys ^ set(metadata))
            raise DatasetError(f"--dataset {path}: {where}: columns differ from the first row's ({', '.join(diff)})")
        texts.append(text)
        metadatas.append(metadata)
    if oversized:
        shown = ", ".join(oversized[:5]) + (f" and {len(oversized) - 5} more" if len(oversized) > 5 else "")
        raise DatasetError(f"--dataset {path}: {len(oversized)} value(s) longer than a Milvus text field holds "
                           f"({MAX_VARCHAR_BYTES:,} bytes): {shown}; shorten or split those documents")
    if not texts:
        raise DatasetError(f"--dataset {path}: no rows")
    if vectors and len(vectors) != len(texts):
        raise DatasetError(f"--dataset {path}: some rows have no vector in column {vector_column!r}")
    return Dataset(str(p), texts, metadatas, vectors or None)
