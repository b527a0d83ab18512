"""Bad input, one table of real ``locust`` processes: each case is one clear error line and a non-zero exit, with
no traceback, no load, no secret printed, and nothing written to an existing collection.

Cases without a target fail before the embedded Milvus would start (checked: it never starts); the others point
``--host`` at the session's Milvus (``{milvus}``), at a collection with known rows on it (``{existing}``), or at
the TLS-and-authentication Milvus (``{secure}``).
"""

from __future__ import annotations

import json
import uuid

import pytest

from .conftest import read_stats_csv, run_locust

pytestmark = pytest.mark.locust

SECRET = "s3cr3t-c4n4ry"  # in some cases' credentials; must never be printed
EXISTING_ROWS = 40
EXISTING_DIM = 32
READ_ONLY = ["--existing-collection", "--add-weight", "0", "--delete-weight", "0"]

# (case id, arguments, extra environment, the phrase of the one error line). Placeholders: {milvus}, {existing}
# (that collection's name, on {milvus}), {secure} (https URI), {secure_http} (the same server as http://),
# {ca}, {other_ca} (a CA that did not sign the server's certificate), {tmp} (the test's folder).
CASES = [
    ("all weights zero", ["--add-weight", "0", "--search-weight", "0", "--delete-weight", "0"], {},
     "task weights must be >= 0 with at least one > 0, got all zero"),
    ("negative weight", ["--add-weight", "-1"], {}, "argument --add-weight: expected a whole number >= 0, got -1"),
    ("unknown operation", ["--nope-weight", "1"], {}, "unrecognized arguments: --nope-weight"),
    ("retriever search type", ["--retriever-search-type", "foo"], {},
     "argument --retriever-search-type: invalid choice: 'foo'"),
    ("retriever threshold out of range", ["--retriever-score-threshold", "2"], {},
     "argument --retriever-score-threshold: expected a relevance score from 0 to 1, got 2.0"),
    ("retriever threshold from the environment", [], {"LOCUST_RETRIEVER_SCORE_THRESHOLD": "high"},
     "argument --retriever-score-threshold: expected a relevance score from 0 to 1, got 'high'"),
    ("unknown scenario", ["--config", "scenarios/nope.conf"], {}, "Unable to open config file: scenarios/nope.conf"),
    ("unknown key in a scenario", ["--config", "{tmp}/bad.conf"], {}, "unrecognized arguments: --nope-weight=1"),
    ("unknown user class", ["NopeUser"], {}, "Unknown User(s): NopeUser"),
    ("URI without scheme", ["--host", "localhost:19530"], {}, "'localhost:19530' is not a Milvus URI"),
    ("URI with a bad scheme", ["--host", "ftp://127.0.0.1:19530"], {}, "'ftp://127.0.0.1:19530' is not a Milvus URI"),
    ("URI with a bad port", ["--host", "http://127.0.0.1:99999"], {}, "has an invalid port"),
    ("URI with credentials and a bad port", ["--host", f"http://root:{SECRET}@127.0.0.1:99999"], {},
     "--host 'http://127.0.0.1:99999' has an invalid port"),
    ("nothing listening", ["--host", "http://127.0.0.1:1", "--milvus-timeout", "2"], {},
     "cannot reach Milvus at http://127.0.0.1:1 within 2 s"),
    ("top-k of zero", ["--top-k", "0"], {}, "argument --top-k: expected a whole number >= 1, got 0"),
    ("negative batch size", ["--batch-size", "-5"], {}, "argument --batch-size: expected a whole number >= 1, got -5"),
    ("zero deadline", ["--milvus-timeout", "0"], {}, "argument --milvus-timeout: expected a number of seconds > 0"),
    ("malformed dataset", ["--dataset", "{tmp}/bad.jsonl"], {}, "bad.jsonl: line 2: not valid JSON"),
    ("dataset document too long", ["--dataset", "{tmp}/big.jsonl"], {},
     "big.jsonl: 1 value(s) longer than a Milvus text field holds (65,535 bytes): line 2 ('text': 70,006 bytes); "
     "shorten or split those documents"),
    ("openai without a key", ["--embedding", "openai"], {"OPENAI_API_KEY": ""},
     "--embedding openai needs OPENAI_API_KEY"),
    ("unreadable threshold", ["--check-p95", "search=fast"], {}, "--check-p95 'search=fast': 'fast' is not a duration"),
    ("threshold of an unknown operation", ["--check-p99", "nope=5ms"], {}, "no operation is named 'nope'"),
    ("collection name Milvus rejects", ["--collection", "my-coll"], {},
     "--collection 'my-coll' is not a valid Milvus collection name"),
    ("collection name too long", ["--collection", "c" * 256], {}, "(256 characters)' is not a valid Milvus collection"),
    ("index parameters not JSON", ["--index-params", "{M: 16}"], {}, "--index-params is not valid JSON"),
    ("CA file with an http URI", ["--host", "http://127.0.0.1:19530", "--milvus-ca-file", "{ca}"], {},
     "--milvus-ca-file is for TLS, but --host 'http://127.0.0.1:19530' is not https://"),
    ("CA file missing", ["--host", "https://127.0.0.1:1", "--milvus-ca-file", "{tmp}/nope.pem"], {},
     "nope.pem' cannot be read (No such file or directory)"),
    ("CA file not PEM", ["--host", "https://127.0.0.1:1", "--milvus-ca-file", "{tmp}/bad.conf"], {},
     "holds no PEM certificate"),
    # --find-capacity: options that cannot make a sweep (exit code 2, as for what Locust's parser refuses)
    ("capacity without rates", ["--find-capacity", "--check-p99", "50ms"], {},
     "--find-capacity needs starting rates: add --target-rps"),
    ("capacity without an SLO", ["--find-capacity", "--target-rps", "search=10"], {},
     "--find-capacity needs an SLO to judge each step by"),
    ("capacity step factor of 1", ["--find-capacity", "--target-rps", "search=10", "--check-p99", "50ms",
                                   "--step-factor", "1"], {}, "argument --step-factor: expected a factor > 1, got 1.0"),
    ("capacity step shorter than its warm-up", ["--find-capacity", "--target-rps", "search=10", "--check-p99", "50ms",
                                                "--step-time", "3s", "--step-warmup", "5s"], {},
     "--step-time 3s leaves less than 2 s after the --step-warmup of 5s to judge"),
    ("capacity run time too short", ["--find-capacity", "--target-rps", "search=10", "--check-p99", "50ms"], {},
     "--run-time 5s is too short for two steps of --step-time 30s: give at least --run-time 60s"),
    ("capacity gate without a sweep", ["--check-capacity", "search=100"], {},
     "--check-capacity judges the capacity a sweep finds: add --find-capacity"),
    # --bm25 and its searches (exit code 2; those only a BM25-capable server shows: tests/test_milvus_lite.py)
    ("full-text search without --bm25", ["--full-text-search-weight", "1"], {},
     "--full-text-search-weight without --bm25: hybrid_search and full_text_search search the collection's BM25"),
    ("paced hybrid search without --bm25", ["--target-rps", "hybrid_search=5"], {},
     "--target-rps hybrid_search=... without --bm25"),
    ("weighted ranker without weights", ["--bm25", "--hybrid-search-weight", "1", "--ranker", "weighted"], {},
     "--ranker weighted needs its weights: --ranker-params"),
    ("weighted ranker with three weights", ["--bm25", "--ranker", "weighted", "--ranker-params",
                                            '{"weights": [0.5, 0.3, 0.2]}'], {},
     "--ranker-params weights [0.5, 0.3, 0.2]: give two numbers from 0 to 1"),
    ("unknown ranker", ["--bm25", "--ranker", "max"], {}, "argument --ranker: invalid choice: 'max'"),
    ("recall gate on hybrid search", ["--bm25", "--check-recall", "hybrid_search=0.9"], {},
     "hybrid_search is not judged by --recall: BM25 scores come from the server's analyzer"),
    ("--bm25 on Milvus 2.3.5", ["--host", "{milvus}", "--bm25", "--drop-collection"], {},
     "--bm25 needs Milvus >= 2.5 (full-text search), but the server reports v2.3.5"),
    # against the collection with known rows: refused, and its row count unchanged
    ("existing collection without --drop-collection", ["--host", "{milvus}", "--collection", "{existing}", "--dim",
                                                        str(EXISTING_DIM)], {},
     "already exists on http://127.0.0.1:"),
    ("dim differs from the collection's", ["--host", "{milvus}", "--collection", "{existing}", "--dim", "64"], {},
     f"has dim {EXISTING_DIM} but --dim is 64"),
    ("writes into --existing-collection", ["--host", "{milvus}", "--collection", "{existing}",
                                           "--existing-collection"], {},
     "--existing-collection is read-only, but --add-weight --delete-weight > 0"),
    ("malformed filter on --existing-collection", ["--host", "{milvus}", "--collection", "{existing}", *READ_ONLY,
                                                   "--dim", str(EXISTING_DIM), "--filter", "category =="], {},
     "--filter 'category ==' is not a valid expression"),
    ("missing collection with --existing-collection", ["--host", "{milvus}", "--collection", "nope_missing",
                                                       *READ_ONLY], {},
     "--existing-collection: collection 'nope_missing' does not exist"),
    # against the Milvus with TLS and authentication
    ("wrong token", ["--host", "{secure}", "--milvus-ca-file", "{ca}", "--milvus-token", f"root:{SECRET}"], {},
     "refused the credentials (auth check failure"),
    ("wrong password in the URI", ["--host", "https://root:" + SECRET + "@{secure_hostport}", "--milvus-ca-file",
                                   "{ca}"], {}, "refused the credentials (auth check failure"),
    ("no token", ["--host", "{secure}", "--milvus-ca-file", "{ca}"], {},
     "refused the credentials (missing authorization in header)"),
    ("TLS without the CA", ["--host", "{secure}", "--milvus-timeout", "3"], {"LOCUST_MILVUS_TOKEN": "root:Milvus"},
     "failed (certificate verify failed: unable to get local issuer certificate): give the CA that signed"),
    ("TLS with a wrong CA", ["--host", "{secure}", "--milvus-ca-file", "{other_ca}", "--milvus-timeout", "3"],
     {"LOCUST_MILVUS_TOKEN": "root:Milvus"}, "another-test-CA.pem did not verify the server's certificate"),
    ("http URI for a TLS server", ["--host", "{secure_http}", "--milvus-timeout", "3"],
     {"LOCUST_MILVUS_TOKEN": "root:Milvus"}, "the server speaks TLS: use https:// in --host"),
]


def _count(client, collection: str) -> int:
    return client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]


@pytest.fixture(scope="module")
def existing(milvus):
    """A collection of EXISTING_ROWS rows (dim EXISTING_DIM) made by a successful run, then a client to count them."""
    from pymilvus import MilvusClient

    name = f"bad_input_{uuid.uuid4().hex[:8]}"
    made = run_locust("--headless", "-u", "1", "-r", "1", "-t", "1s", "--host", milvus.uri, "--collection", name,
                      "--dim", str(EXISTING_DIM), "--prepopulate", str(EXISTING_ROWS), "--search-weight", "1",
                      "--add-weight", "0", "--delete-weight", "0")
    assert made.returncode == 0, made.output[-3000:]
    client = MilvusClient(uri=milvus.uri)
    assert _count(client, name) == EXISTING_ROWS
    yield name, client
    client.drop_collection(name)
    client.close()


@pytest.mark.parametrize("args, env, phrase", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(request, tmp_path, args, env, phrase):
    (tmp_path / "bad.jsonl").write_text('{"text": "a fine document"}\n{"text": \n')
    (tmp_path / "bad.conf").write_text("nope-weight = 1\n")
    (tmp_path / "big.jsonl").write_text('{"text": "short"}\n' + json.dumps({"text": "x" * 70_000 + "é" * 3}) + "\n")
    text = " ".join(args)
    values = {"tmp": tmp_path}
    if "{milvus}" in text:
        values["milvus"] = request.getfixturevalue("milvus").uri
    if "{existing}" in text:
        values["existing"], client = request.getfixturevalue("existing")
        before = _count(client, values["existing"])
    if "{secure" in text or "{ca}" in text or "{other_ca}" in text:
        secure = request.getfixturevalue("secure_milvus")
        hostport = secure.uri.removeprefix("https://")
        values.update(secure=secure.uri, secure_http=f"http://{hostport}", secure_hostport=hostport,
                      ca=secure.ca_file, other_ca=secure.other_ca_file)
    for name, value in values.items():  # not str.format: some arguments hold braces of their own (JSON)
        args = [arg.replace(f"{{{name}}}", str(value)) for arg in args]
    env = {"HOME": str(tmp_path), **env}  # no user's .cache or credentials involved

    result = run_locust("--headless", "-u", "2", "-r", "2", "-t", "5s", "--csv", str(tmp_path / "run"),
                        "--reports-dir", str(tmp_path / "reports"), *args, env=env, timeout=120)

    assert result.returncode != 0, result.output[-3000:]
    if {"--find-capacity", "--check-capacity", "--bm25", "--full-text-search-weight"} & set(args) or "hybrid_search=5" \
            in args:
        assert result.returncode == 2, result.output[-3000:]  # a usage error, as the parser's own
    assert "Traceback" not in result.output, result.output[-3000:]
    lines = [line for line in result.output.splitlines() if phrase in line]
    assert len(lines) == 1, result.output[-3000:]
    assert "ERROR" in lines[0] or "error" in lines[0], lines[0]
    assert SECRET not in result.output
    if (tmp_path / "run_stats.csv").exists():  # no load was generated
        assert all(int(row["Request Count"]) == 0 for row in read_stats_csv(tmp_path / "run").values())
    # Without --host, refused before the embedded Milvus would start; with one, it never starts.
    assert "embedded Milvus 2.3.5 ready" not in result.output and "using the embedded Milvus" not in result.output
    if "{existing}" in text:
        assert _count(client, values["existing"]) == before == EXISTING_ROWS
