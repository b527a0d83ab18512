"""Fast tests with fakes: options, the operations table, events, the id ledger (no server)."""

from __future__ import annotations

from locust.env import Environment

import random
from types import SimpleNamespace

import pytest
from langchain_milvus import Milvus

from locust_milvus.config import options
from locust_milvus.config.load import settings_from
from locust_milvus.config.settings import ConfigError
from locust_milvus.workload.data import IdLedger
from locust_milvus.workload.operations import TABLE, RunState
from locust_milvus.workload.request_events import OperationFailed, fire, normalise

from .conftest import LOCUSTFILE, ROOT, make_settings


def fake_environment(**overrides):
    """An environment whose parsed options are the real parser's defaults (our listener registered), overridden."""
    from locust.argument_parser import get_parser

    parsed = get_parser(default_config_files=[]).parse_args(["-f", str(LOCUSTFILE)])
    parsed.host = "http://127.0.0.1:19530"
    for name, value in overrides.items():
        setattr(parsed, name, value)
    return SimpleNamespace(host=None, parsed_options=parsed)


def test_settings_defaults_are_read():
    s = settings_from(fake_environment())
    assert {name: w for name, w in s.weights.items() if w} == {"add": 1, "search": 8, "delete": 1}
    assert s.call_kwargs == {"timeout": 10.0, "retry_on_rate_limit": False}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(add_weight=0, search_weight=0, delete_weight=0), "task weights must be >= 0 with at least one > 0"),
        (dict(add_weight=-1), "task weights must be >= 0"),
        (dict(search_weight="lots"), "--search-weight must be a whole number"),
        (dict(host="localhost:19530"), "is not a Milvus URI"),
        (dict(host="http://h:99999"), "invalid port"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
        (dict(milvus_timeout=0), "--milvus-timeout must be a number of seconds > 0"),
        (dict(collection="1bad-name"), "is not a valid Milvus collection name"),
        (dict(index_params="{M: 16}"), "--index-params is not valid JSON"),
        (dict(search_params="[1]"), "--search-params must be a JSON object"),
        (dict(existing_collection=True), "--existing-collection is read-only, but --add-weight --delete-weight > 0"),
        (dict(vector_field="my-vector"), "--vector-field 'my-vector' is not a valid field name"),
    ],
)
def test_bad_options_give_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        settings_from(fake_environment(**overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_options_are_env_vars_and_in_the_web_ui(monkeypatch):
    from locust import argument_parser

    monkeypatch.setenv("LOCUST_ADD_WEIGHT", "7")
    parser = argument_parser.get_parser(default_config_files=[])
    parsed = parser.parse_args(["-f", str(LOCUSTFILE)])
    assert parsed.add_weight == 7
    in_ui = parser.args_included_in_web_ui
    for dest in ("add_weight", "search_weight", "delete_weight", "batch_size", "top_k", "prepopulate", "dim",
                 "async_concurrency", "milvus_timeout", "collection"):
        assert dest in in_ui, dest
    assert "milvus_token" not in in_ui  # a masked field would still send its value to the browser


def test_every_option_is_documented_once_in_docs_options():
    # Locust's --help does not load the locustfile, so docs/options.md is where users read about these options:
    # every option of ours is there, every option its tables name is one the parser knows, each in one row only,
    # and the README repeats no option table.
    from locust import argument_parser

    import re

    parser = argument_parser.get_parser(default_config_files=[])
    ours = [a for a in parser._actions if any(g.title.startswith("locust-milvus") for g in parser._action_groups
                                              if a in g._group_actions)]
    assert len(ours) >= 15
    doc = (ROOT / "docs" / "options.md").read_text()
    for action in ours:
        flag = action.option_strings[0]
        assert f"`{flag}" in doc, f"{flag} is not documented in docs/options.md"
        assert action.env_var in doc, f"{action.env_var} is not documented in docs/options.md"
    # The first column of every table row: `--flag`, or several (`--check-p50`, `--check-p90`, ...).
    first_cells = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `--")]
    documented = [flag for cell in first_cells for flag in re.findall(r"`(--[a-z0-9-]+)`", cell)]
    known = {flag for action in parser._actions for flag in action.option_strings}
    assert len(documented) >= len(ours)
    assert [flag for flag in documented if flag not in known] == [], "docs/options.md documents unknown options"
    assert sorted({f for f in documented if documented.count(f) > 1}) == [], "an option has two rows"
    readme = (ROOT / "README.md").read_text()
    assert [line for line in readme.splitlines() if line.startswith("| `--")] == [], "README.md has option rows"


def test_every_table_entry_is_a_langchain_sync_async_pair():
    assert set(TABLE) == set(options.DEFAULT_WEIGHTS)
    from langchain_core.vectorstores import VectorStoreRetriever

    for op in TABLE.values():
        on = VectorStoreRetriever if op.via == "retriever" else Milvus
        assert callable(getattr(on, op.method)), op.method
        assert callable(getattr(on, op.async_method)), op.async_method


class FakeStore:
    """Answers each LangChain method with a scripted value."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def __getattr__(self, name):
        def method(**kwargs):
            self.calls.append((name, kwargs))
            return self.answers[name]

        return method


def state_with(store, **overrides) -> RunState:
    return RunState(settings=make_settings("http://127.0.0.1:1", "c", **overrides), store=store,
                    ledger=IdLedger("t"), rng=random.Random(1), query_vectors=[[0.0, 1.0]])


def test_add_then_delete_only_own_ids():
    state = state_with(FakeStore())
    add, delete = TABLE["add"], TABLE["delete"]
    call = add.prepare(state)
    assert add.complete(state, call, call.kwargs["ids"], None) == (5, None)
    delete_call = delete.prepare(state)
    assert delete_call.kwargs["ids"] == call.kwargs["ids"]  # the oldest ids this process wrote, never others
    assert delete.complete(state, delete_call, True, None) == (5, None)
    assert delete.prepare(state) is None  # nothing owned: skipped, not failed


def test_delete_returning_false_is_a_failure_and_keeps_the_ids():
    state = state_with(FakeStore())
    state.ledger.added(["a", "b"])
    call = TABLE["delete"].prepare(state)
    length, exc = TABLE["delete"].complete(state, call, False, None)
    assert length == 0 and isinstance(exc, OperationFailed) and "delete returned False" in str(exc)
    assert len(state.ledger) == 2  # still owned, so a later delete retries them


def test_add_with_missing_ids_is_a_failure():
    state = state_with(FakeStore())
    call = TABLE["add"].prepare(state)
    length, exc = TABLE["add"].complete(state, call, call.kwargs["ids"][:2], None)
    assert isinstance(exc, OperationFailed) and len(state.ledger) == 0


def test_empty_search_fails_only_when_the_search_was_sure_to_find_something():
    search = TABLE["search"]
    state = state_with(FakeStore())
    early = search.prepare(state)  # started before any add of ours finished: no guarantee
    state.ledger.added(["a"])
    late = search.prepare(state)
    assert search.complete(state, early, [], None) == (0, None)
    length, exc = search.complete(state, late, [], None)
    assert isinstance(exc, OperationFailed) and "known to be non-empty" in str(exc)
    state.ledger.take(1)  # our only document is being deleted: an empty result is possible again
    assert search.complete(state, late, [], None) == (0, None)
    eventually = state_with(FakeStore(), consistency_level="Eventually")
    eventually.ledger.added(["a"])
    assert search.complete(eventually, search.prepare(eventually), [], None) == (0, None)


def test_zero_weight_operations_are_never_picked():
    state = state_with(FakeStore(), weights={**{name: 0 for name in TABLE}, "search": 3, "delete": 1})
    picks = {state.pick().name for _ in range(2000)}
    assert picks == {"search", "delete"}


def test_ledger_arithmetic():
    ledger = IdLedger("x")
    ids, docs = ledger.new_batch(3, random.Random(0))
    assert ids == ["x-0", "x-1", "x-2"] and [d.metadata["id"] for d in docs] == ["doc_0", "doc_1", "doc_2"]
    assert set(docs[0].metadata) == {"id", "score", "category"}
    ledger.added(ids)
    mark = ledger.added_total
    taken = ledger.take(2)
    assert taken == ["x-0", "x-1"] and ledger.holds_any_added_before(mark)
    ledger.take(5)
    assert not ledger.holds_any_added_before(mark)
    ledger.give_back(["x-2"])
    assert ledger.holds_any_added_before(mark) and len(ledger) == 1


def test_fire_sends_one_event_with_float_ms_through_the_environment():
    env = Environment()
    seen = []
    env.events.request.add_listener(lambda **kw: seen.append(kw))
    fire(env, "langchain-sync", "search", 0.0012345, 3, None)
    fire(env, "langchain-async", "delete", 0.5, 0, ValueError("boom"))
    assert len(seen) == 2
    assert seen[0]["response_time"] == pytest.approx(1.2345) and isinstance(seen[0]["response_time"], float)
    assert seen[0]["exception"] is None and seen[0]["response_length"] == 3
    assert isinstance(seen[1]["exception"], OperationFailed) and str(seen[1]["exception"]) == "ValueError: boom"


def test_an_operation_past_its_deadline_is_a_failure_whatever_let_it_run_on():
    from locust_milvus.workload.request_events import fire_operation

    env = Environment()
    seen = []
    env.events.request.add_listener(lambda **kw: seen.append(kw))
    fire_operation(env, "langchain-sync", "delete", 11.2, 0, None, deadline_s=10.0)  # succeeded, 1.2 s too late
    fire_operation(env, "langchain-sync", "delete", 9.9, 0, None, deadline_s=10.0)
    late, in_time = seen
    assert late["response_time"] == pytest.approx(11200.0) and in_time["exception"] is None
    assert str(late["exception"]) == ("DeadlineExceeded: the operation took longer than --milvus-timeout (10 s) "
                                      "although no call raised")


def test_normalise_masks_ids_and_keeps_one_line():
    exc = normalise(RuntimeError("Task <Task at 0x7f3a2b1c0d00> failed for 470611779738402831abcdef\nmore"))
    assert str(exc) == "RuntimeError: Task <Task at <id>> failed for <id>"
    assert "0x7f3a2b1c0d00" not in str(exc) and "\n" not in str(exc)


def test_normalise_names_the_grpc_status_and_caps_the_kinds(monkeypatch):
    import grpc

    from locust_milvus.workload import request_events as events

    class FakeRpcError(grpc.RpcError):
        def __str__(self):
            return "<AioRpcError of RPC that terminated with:\n\tstatus = StatusCode.UNAVAILABLE"

        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "failed to connect to all addresses"

    assert str(normalise(FakeRpcError())) == "FakeRpcError: UNAVAILABLE: failed to connect to all addresses"
    # set-up errors use the same line (they once said only "<_InactiveRpcError of RPC that terminated with:")
    assert events.one_line(FakeRpcError()) == "FakeRpcError: UNAVAILABLE: failed to connect to all addresses"
    monkeypatch.setattr(events, "_kinds", set())
    monkeypatch.setattr(events, "MAX_ERROR_KINDS", 3)
    kinds = {str(normalise(ValueError(f"kind {letter}"))) for letter in "abcdef"}
    assert len(kinds) == 4 and any(k.startswith("other errors") for k in kinds)
    assert str(normalise(ValueError("kind a"))) == "ValueError: kind a"  # a known kind keeps its row


def test_sparklines_draw_the_last_minute_scaled_to_a_top():
    from locust_milvus.web.page import sparkline

    assert sparkline([], 100.0) == ""
    assert sparkline([0, 50, 100], 100.0) == "▁▅█"
    assert sparkline([10, 400], 100.0) == "▁█"  # past the top: scaled to the largest
    assert len(sparkline(list(range(120)), 100.0)) == 60


def test_the_runs_verify_verdict_adds_up_workers_and_names_those_that_did_not_check():
    from locust_milvus.milvus.verdict import Verdict, blocks, line_of, merge

    ok = Verdict(checked=10, unknown=2).summary()
    lost = Verdict(checked=5, missing=["w1-a", "w1-b"]).summary()
    run = merge({"worker 1": lost, "worker 0": ok}, "no verdict")
    assert (run["ok"], run["checked"], run["missing"], run["unknown_outcome"]) == (False, 15, 2, 2)
    assert run["missing_examples"] == ["w1-a", "w1-b"] and run["processes_verified"] == 2
    assert [p["process"] for p in run["processes"]] == ["worker 0", "worker 1"]
    assert line_of(run) == ("locust-milvus verify: FAILED checked=15 missing=2 deleted_but_present=0 "
                            "duplicate_rows=0 unknown_outcome=2 processes_verified=2/2; missing e.g. w1-a, w1-b")
    # A worker's own line says whose it is; a local runner's is the run's, as before.
    assert Verdict(checked=3).line("worker 0").startswith("locust-milvus verify (worker 0): OK checked=3 ")
    assert Verdict(checked=3).line() == ("locust-milvus verify: OK checked=3 missing=0 deleted_but_present=0 "
                                         "duplicate_rows=0 unknown_outcome=0")
    # A worker that sent nothing, or could not query Milvus, adds no counts and fails the run: never OK unchecked.
    silent = merge({"worker 0": ok, "worker 2": None, "worker 10": Verdict(checked=7, error="boom").summary()},
                   "no verdict arrived")
    assert not silent["ok"] and silent["checked"] == 10 and silent["processes_verified"] == 1
    assert line_of(silent).endswith("processes_verified=1/3; not verified by worker 2: no verdict arrived; "
                                    "not verified by worker 10: boom")
    # The master's own pre-populated documents alone are not the run's writes: no worker took part.
    assert not merge({"master": Verdict(checked=50).summary()}, "x")["ok"]
    assert not merge({}, "x")["ok"]
    md = "\n".join(str(b) for b in blocks({**silent, "line": line_of(silent)}))
    assert "Write ledger (--verify): FAILED" in md and "no verdict arrived" in md


def test_the_master_waits_for_the_workers_that_took_part_and_fails_on_a_missing_verdict():
    from locust.argument_parser import get_parser
    from locust.rpc import Message
    from locust.runners import STATE_INIT, STATE_RUNNING, WorkerNode

    from locust_milvus.milvus.verdict import Verdict
    from locust_milvus.run_verdict import MESSAGE, RunVerdict

    from .test_web_ui import free_port

    env = Environment(user_classes=[], parsed_options=get_parser(default_config_files=[]).parse_args(["--verify"]))
    runner = env.create_master_runner("127.0.0.1", free_port())
    try:
        verdicts = RunVerdict()
        verdicts.on_init(env, runner)
        verdicts.on_test_start(env)
        for client_id, index, state in (("a", 0, STATE_RUNNING), ("b", 1, STATE_RUNNING), ("late", 2, STATE_INIT)):
            runner.clients[client_id] = WorkerNode(client_id)
            runner.clients[client_id].state = state
            runner.worker_indexes[client_id] = index
        listener, _ = runner.custom_messages[MESSAGE]
        listener(environment=env, msg=Message(MESSAGE, {"worker": "worker 0", **Verdict(checked=4).summary()}, "a"))
        verdicts.on_test_stopping(env)
        assert verdicts.pending() and set(verdicts.expected) == {"a", "b"}  # "late" joined after the start
        result = verdicts.settle(env, timeout=0.05)  # worker 1's verdict never comes
        assert not result["ok"] and result["checked"] == 4 and result["processes_verified"] == 1
        assert "not verified by worker 1: its verdict had not arrived" in result["line"]
        assert env.process_exit_code == 4
    finally:
        runner.quit()


def test_bm25_server_versions():
    from locust_milvus.milvus.bm25 import server_problem

    s = make_settings("http://x:1", "c", bm25=True)
    assert server_problem(s, "v2.3.5").startswith("--bm25 needs Milvus >= 2.5 (full-text search), but the server "
                                                  "reports v2.3.5")
    assert server_problem(s, "v2.4.17") is not None
    for fine in ("v2.5.0", "v2.6.3", "2.5.10", "milvus_lite-3.2.2", None, "", "some-proxy"):
        assert server_problem(s, fine) is None, fine
    assert "Milvus Lite >= 3.0" in server_problem(s, "milvus_lite-2.4.1")
    english = make_settings("http://x:1", "c", bm25=True, bm25_analyzer={"type": "english"})
    assert "whose analyzers are standard and jieba" in server_problem(english, "milvus_lite-3.2.2")
    assert server_problem(english, "v2.5.4") is None
    jieba = make_settings("http://x:1", "c", bm25=True, bm25_analyzer={"tokenizer": {"type": "jieba"}})
    assert server_problem(jieba, "milvus_lite-3.2.2") is None


def test_bm25_options_are_checked():
    env = fake_environment(bm25=True, ranker="weighted", ranker_params='{"weights": [0.7, 0.3]}',
                           bm25_analyzer='{"tokenizer": "standard", "filter": ["lowercase"]}',
                           hybrid_search_weight=2)
    s = settings_from(env)
    assert (s.bm25, s.ranker, s.ranker_params, s.sparse_field) == (True, "weighted", {"weights": [0.7, 0.3]}, "sparse")
    assert s.bm25_analyzer == {"tokenizer": "standard", "filter": ["lowercase"]}
    assert settings_from(fake_environment(bm25=True, bm25_analyzer="english")).bm25_analyzer == {"type": "english"}
    refused = {
        "--ranker-params weights [1.5, 0.3]": dict(bm25=True, ranker="weighted",
                                                   ranker_params='{"weights": [1.5, 0.3]}'),
        "--ranker-params is not valid JSON": dict(bm25=True, ranker_params="{k: 60}"),
        "RRF's k is a whole number": dict(bm25=True, ranker_params='{"k": -1}'),
        "--bm25-analyzer is not valid JSON": dict(bm25=True, bm25_analyzer="{type: english}"),
        "is neither an analyzer name": dict(bm25=True, bm25_analyzer="english stemmer"),
        "--hybrid-search-weight without --bm25": dict(hybrid_search_weight=1),
        "--sparse-field 'a b' is not a valid field name": dict(bm25=True, sparse_field="a b"),
    }
    for phrase, overrides in refused.items():
        with pytest.raises(ConfigError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
            settings_from(fake_environment(**overrides))
    # a weighted ranker named without --bm25 is no error: nothing would use it
    assert settings_from(fake_environment(ranker="weighted")).ranker == "weighted"
