"""--dataset: the loader's error cases (with the line or row at fault) and runs on real text."""

from __future__ import annotations

import json
import re

import pytest

from locust_milvus.workload.dataset import DatasetError, load_dataset

from .conftest import ROOT, read_stats_csv, run_locust

SAMPLE = ROOT / "data" / "python_stdlib_docs.jsonl"


def test_shipped_sample_loads():
    ds = load_dataset(str(SAMPLE))
    assert len(ds) > 300 and ds.vectors is None
    assert set(ds.metadatas[0]) == {"module", "kind", "category"}


def test_formats_and_vectors(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "k": 1, "vector": [0.5, 1]}\n\n{"text": "b", "k": 2, "vector": [1, 2]}\n')
    assert load_dataset(str(jsonl)).vectors == [[0.5, 1.0], [1.0, 2.0]]
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('body,lang,vector\nhello,en,"[1, 2]"\nhallo,de,"[3, 4]"\n')
    ds = load_dataset(str(csv_file), text_column="body")
    assert ds.texts == ["hello", "hallo"] and ds.metadatas[1] == {"lang": "de"} and ds.vectors[1] == [3.0, 4.0]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x", "y"], "n": [1, 2]}), tmp_path / "d.parquet")
    assert load_dataset(str(tmp_path / "d.parquet")).metadatas == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", '{"text": "a"}\n{"text": "b"\n', "line 2: not valid JSON"),
        ("a.jsonl", '{"text": "a"}\n[1, 2]\n', "line 2: expected a JSON object"),
        ("a.jsonl", '{"text": "a"}\n{"body": "b"}\n', "line 2: no text in column 'text'"),
        ("a.jsonl", '{"text": "a", "k": 1}\n{"text": "b", "j": 1}\n', "line 2: columns differ from the first row's"),
        ("a.jsonl", '{"text": "a", "pk": "x"}\n', "line 1: column 'pk' is reserved"),
        ("a.jsonl", '{"text": "a", "tags": ["x"]}\n', "line 1: column 'tags' is not a string, number or boolean"),
        ("a.jsonl", '{"text": "a", "vector": [1, 2]}\n{"text": "b", "vector": [1]}\n', "line 2: vector of dim 1"),
        ("a.jsonl", '{"text": "a", "vector": "nope"}\n', "line 1: column 'vector' is not a list of numbers"),
        ("a.jsonl", "", "no rows"),
        ("a.csv", "text,k\na,1\nb\n", "line 3: has 2 columns in the header but not in this row"),
        ("a.parquet", "not parquet", "not a readable Parquet file"),
        ("a.txt", "text", "unknown format '.txt'"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError) as err:
        load_dataset(str(path))
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset("/nonexistent/data.jsonl")


@pytest.mark.locust
def test_run_on_the_shipped_sample(milvus, collection, tmp_path):
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection",
                        collection, "--dataset", str(SAMPLE), "--prepopulate", "300", "--search-by-vector-weight", "2",
                        "--add-embeddings-weight", "1", "--upsert-weight", "1", "--metadata-filter",
                        "category == 'text'", "--search-by-metadata-weight", "1", "--csv", str(tmp_path / "run"))
    assert result.returncode == 0, result.output[-3000:]
    assert re.search(r"pre-population \[#{20}\] 300/300 documents 100% \(\d+/s, ETA 0 s\)", result.output)
    stats = read_stats_csv(tmp_path / "run")
    assert int(stats[("", "Aggregated")]["Request Count"]) > 0
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0


@pytest.mark.locust
def test_run_with_dataset_vectors(milvus, collection, tmp_path):
    from locust_milvus.workload.embeddings import make_embedding

    emb = make_embedding(32)
    path = tmp_path / "vectors.jsonl"
    rows = [{"text": f"doc {i}", "group": f"g{i % 3}", "vector": emb.embed_query(f"doc {i}")} for i in range(100)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_locust("--headless", "-u", "4", "-r", "4", "-t", "4s", "--host", milvus.uri, "--collection",
                        collection, "--dataset", str(path), "--dim", "32", "--prepopulate", "100",
                        "--search-by-vector-weight", "2", "--add-embeddings-weight", "1",
                        "--csv", str(tmp_path / "run"))
    assert result.returncode == 0, result.output[-3000:]
    assert "100 documents with vectors" in result.output
    assert int(read_stats_csv(tmp_path / "run")[("", "Aggregated")]["Failure Count"]) == 0
    mismatch = run_locust("--headless", "-u", "1", "-t", "2s", "--host", milvus.uri, "--collection", collection + "x",
                          "--dataset", str(path), "--dim", "64")
    assert mismatch.returncode == 1 and "its vectors have dim 32 but the fake embedding gives 64" in mismatch.output


@pytest.mark.locust
def test_malformed_dataset_stops_the_run_before_load(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{oops}\n')
    result = run_locust("--headless", "-u", "1", "-t", "2s", "--dataset", str(path))
    assert result.returncode == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if "line 2: not valid JSON" in line]
