"""Batch mode of the openai backend (pipeline/models/openai_api/batch.py): the real `openai` client against the
files and batches endpoints of a real HTTP server on 127.0.0.1 (tests/openai_server.py)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_server import OpenAIServer, default_respond
from pydantic import ValidationError
from test_llm_openai import ask, cache_fixture  # noqa: F401 (the fixture "cache", used by name)

from pipeline.core.cache import CallCache
from pipeline.core.config import ModelSpec
from pipeline.core.errors import ConfigError, ModelError
from pipeline.core.store import Run
from pipeline.models.llm import call_llm, check_spec

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "logprobs", "error")


def batch_spec(server, **kw) -> ModelSpec:
    kw = {"model": "fake-model", "mode": "batch", "batch_poll_s": 0.02, "max_retries": 1, "timeout": 5, **kw}
    return ModelSpec(backend="openai", base_url=server.url, **kw)


def journal(path: Path) -> list[tuple[str, str, int]]:
    """(batch_id, status, number of requests) of every batch the run recorded, read as another process would."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT batch_id, status, keys FROM batches ORDER BY created").fetchall()
    return [(batch_id, status, len(json.loads(keys))) for batch_id, status, keys in rows]


def uploaded_lines(server) -> list[list[dict]]:
    """The request lines of each batch created, in order."""
    return [batch["_lines"] for batch in server.batches.values()]


def test_answers_equal_the_realtime_ones_and_come_from_the_cache_after(openai_server, cache, tmp_path):
    openai_server.batch_polls = 3
    requests = [ask(f"question {i}", temperature=t) for i in range(6) for t in (0.2, 0.9)] + [
        ask("probs", logprobs=True, top_logprobs=2)
    ]
    results = call_llm(batch_spec(openai_server), requests, cache, "batch")
    assert len(openai_server.batches) == 1 and openai_server.total == len(requests)
    [(batch_id, status, size)] = journal(cache.path)
    assert status == "completed" and size == len(requests)
    assert openai_server.batches[batch_id]["_retrieves"] == 3  # polled until it ended
    first = uploaded_lines(openai_server)[0][0]
    assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
    assert first["body"] == {"model": "fake-model", **requests[0].payload()}

    realtime = CallCache(tmp_path / "realtime.sqlite")
    expected = call_llm(batch_spec(openai_server, mode="realtime"), requests, realtime, "realtime")
    realtime.close()
    assert [[getattr(r, f) for f in FIELDS] for r in results] == [[getattr(r, f) for f in FIELDS] for r in expected]
    assert all(r.error is None and not r.cached for r in results) and results[-1].logprobs

    total = openai_server.total
    again = call_llm(batch_spec(openai_server), requests, cache, "batch")
    assert all(r.cached for r in again) and openai_server.total == total and len(openai_server.batches) == 1


def test_requests_are_split_into_files_of_batch_max_requests(openai_server, cache):
    requests = [ask(f"split {i}") for i in range(10)]
    results = call_llm(batch_spec(openai_server, batch_max_requests=4), requests, cache, "batch")
    assert [len(lines) for lines in uploaded_lines(openai_server)] == [4, 4, 2]
    assert [r.text for r in results] == [default_respond({"model": "fake-model", **r.payload()}) for r in requests]
    assert [status for _, status, _ in journal(cache.path)] == ["completed"] * 3


def test_per_request_failures_are_recorded_and_asked_again_next_run(openai_server, cache):
    def respond(request):
        text = request["messages"][-1]["content"]
        faults = {
            "bad request": {"fault": "400"},
            "broken": {"fault": "500"},
            "dropped": {"fault": "reset"},
            "refused": {"content": None, "refusal": "I can't help with that"},
        }
        return faults.get(text) or default_respond(request)

    openai_server.respond = respond
    requests = [ask("fine"), ask("bad request"), ask("broken"), ask("dropped"), ask("refused")]
    results = call_llm(batch_spec(openai_server), requests, cache, "batch")
    assert results[0].error is None and results[0].text
    assert [r.error for r in results[1:]] == [
        "HTTP 400: scripted 400",
        "HTTP 500: scripted 500",
        "batch error server_error: scripted reset",
        "refused: I can't help with that",
    ]
    assert all(r.text is None for r in results[1:])
    assert len(cache) == 1  # failures are not cached
    counts = openai_server.batches[journal(cache.path)[0][0]]["request_counts"]
    assert counts == {"total": 5, "completed": 2, "failed": 3}  # the refusal is a 200

    openai_server.respond = default_respond
    again = call_llm(batch_spec(openai_server), requests, cache, "batch")
    assert [r.cached for r in again] == [True, False, False, False, False] and all(r.error is None for r in again)
    assert [len(lines) for lines in uploaded_lines(openai_server)] == [5, 4]  # only the failed ones again


@pytest.mark.parametrize("listed", [True, False], ids=["unreached-listed", "unreached-not-listed"])
def test_an_expired_batch_keeps_what_ran_and_asks_the_rest_again(openai_server, cache, listed):
    """OpenAI lists the requests an expired batch never ran as `batch_expired` lines; a server that does not
    list them gets the same result."""
    openai_server.batch_outcomes.append({"polls": 2, "expire_after": 3, "list_unreached": listed})
    requests = [ask(f"expiring {i}") for i in range(8)]
    results = call_llm(batch_spec(openai_server), requests, cache, "batch")
    assert [r.error for r in results] == [None] * 3 + ["batch expired before this request ran"] * 5
    assert [status for _, status, _ in journal(cache.path)] == ["expired"]
    assert len(cache) == 3

    again = call_llm(batch_spec(openai_server), requests, cache, "batch")
    assert all(r.error is None for r in again) and [r.cached for r in again] == [True] * 3 + [False] * 5
    assert [len(lines) for lines in uploaded_lines(openai_server)] == [8, 5]
    assert sorted(openai_server.prompt_counts.values()) == [1] * 8  # nothing paid twice


def test_a_failed_batch_gives_each_request_its_validation_errors(openai_server, cache):
    openai_server.batch_outcomes.append(
        {"errors": [{"code": "invalid_request", "line": 2, "message": "max_tokens is too large", "param": None}]}
    )
    requests = [ask(f"invalid {i}") for i in range(3)]
    results = call_llm(batch_spec(openai_server), requests, cache, "batch")
    [(batch_id, status, _)] = journal(cache.path)
    assert status == "failed" and openai_server.total == 0
    assert {r.error for r in results} == {f"batch {batch_id} failed: line 2: invalid_request: max_tokens is too large"}
    assert len(cache) == 0

    again = call_llm(batch_spec(openai_server), requests, cache, "batch")
    assert all(r.error is None for r in again) and len(openai_server.batches) == 2


def test_rejected_key_unknown_model_or_no_batch_api_raise(cache, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "wrong-key")
    with OpenAIServer(api_key="right-key", models=["fake-model"]) as server:
        with pytest.raises(ModelError, match="refused the key .* HTTP 401"):
            call_llm(batch_spec(server, api_key_env="TEST_KEY"), [ask("q")], cache, "t")
        assert not server.batches and not journal(cache.path)

        monkeypatch.setenv("TEST_KEY", "right-key")
        with pytest.raises(ModelError, match="refused model 'no-such-model'.*model_not_found.*does not exist"):
            call_llm(batch_spec(server, api_key_env="TEST_KEY", model="no-such-model"), [ask("q")], cache, "t")
        assert server.total == 0 and [status for _, status, _ in journal(cache.path)] == ["failed"]

    with OpenAIServer(batch_api=False) as server, pytest.raises(ModelError, match="has no Batch API") as raised:
        call_llm(batch_spec(server), [ask("q")], cache, "t")
    assert "mode: realtime" in raised.value.hint


def test_batch_settings_belong_to_the_openai_backend_and_one_server():
    with pytest.raises(ValidationError, match="`mode` is a setting of the openai backend"):
        ModelSpec(backend="transformers", model="embedded:smollm2", mode="batch")
    with pytest.raises(ValidationError, match="mode"):
        ModelSpec(backend="openai", model="m", mode="offline")
    spec = ModelSpec(backend="openai", model="m", base_url=["http://a/v1", "http://b/v1"], mode="batch")
    with pytest.raises(ConfigError, match="mode: batch and 2 base_urls") as raised:
        check_spec(spec)
    assert "one `base_url`" in raised.value.hint


def write_config(tmp_path: Path, server, n_prompts: int, **gen) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Prompt number {i}: tell me about topic {i}."}) + "\n" for i in range(n_prompts))
    )
    gen = {
        "name": "fake",
        "backend": "openai",
        "model": "fake-model",
        "base_url": server.url,
        "temperatures": [0.3, 1.0],
        "n": 2,
        "max_tokens": 40,
        "max_retries": 1,
        "timeout": 5,
        "mode": "batch",
        "batch_poll_s": 0.3,
        **gen,
    }
    config = {
        "run": str(tmp_path / "run"),
        "stages": ["ingest", "generate"],
        "ingest": {"paths": [str(prompts)]},
        "generate": {"generators": [gen]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.mark.parametrize("server_side", ["kept", "gone"])
def test_a_killed_run_waits_for_its_batch_instead_of_paying_again(openai_server, tmp_path, prefab, server_side):
    """`prefab run` with a batch-mode generator, killed (-9) while its batch runs: started again, it collects the
    batch it had submitted (one batch, each request paid once) and writes the same candidates as a realtime run.
    A batch the server no longer knows is forgotten and its requests submitted again."""
    openai_server.batch_polls = 10**6  # no progress until the test says so
    (tmp_path / "a").mkdir()
    config = write_config(tmp_path / "a", openai_server, 6)  # 6 prompts x 2 temperatures x 2 samples
    cache_path = tmp_path / "a" / "run" / "cache.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.commands.cli", "run", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not openai_server.batches or next(iter(openai_server.batches.values()))["_retrieves"] < 1:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no batch was submitted"
        time.sleep(0.02)
    [batch_id] = openai_server.batches
    openai_server.batch_polls_left(6)  # 4 lines a poll from now on
    while openai_server.batches[batch_id]["_answered"] == 0:
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # the next poll is 0.3 s away: the batch is part done
    proc.wait()
    assert 0 < openai_server.batches[batch_id]["_answered"] < 24
    assert journal(cache_path) == [(batch_id, "open", 24)]
    if server_side == "gone":
        del openai_server.batches[batch_id]
        openai_server.batch_polls = 1
    paid = openai_server.total

    result = prefab("run", config)
    assert result.exit_code == 0, result.output
    candidates = Run(tmp_path / "a" / "run").read("candidates")
    assert candidates.height == 24 and candidates["error"].null_count() == 24
    if server_side == "kept":
        assert "waiting for 1 batch(es) an earlier run submitted" in result.output, result.output
        assert "batch fake (batches: 1 completed)" in result.output  # the bar over the batch's own counts
        assert len(openai_server.batches) == 1 and journal(cache_path) == [(batch_id, "completed", 24)]
        assert openai_server.total == 24 and set(openai_server.request_counts.values()) == {1}  # nothing paid twice
    else:
        [(_, gone, _), (_, status, size)] = journal(cache_path)
        assert (gone, status, size) == ("missing", "completed", 24) and len(openai_server.batches) == 1
        assert openai_server.total == paid + 24  # asked again: the server lost the first batch's answers

    (tmp_path / "b").mkdir()
    realtime = write_config(tmp_path / "b", openai_server, 6, mode="realtime")
    assert prefab("run", realtime).exit_code == 0
    fresh = Run(tmp_path / "b" / "run").read("candidates")
    assert candidates.drop("latency_s").equals(fresh.drop("latency_s"))


def test_a_cancelled_batch_keeps_what_ran(openai_server, cache):
    """Cancelled from elsewhere (the provider's dashboard, another client) while the run waits."""
    import threading

    import openai

    openai_server.batch_polls = 10**6
    requests = [ask(f"cancelled {i}") for i in range(9)]
    results = []
    waiter = threading.Thread(
        target=lambda: results.extend(call_llm(batch_spec(openai_server, batch_poll_s=0.3), requests, cache, "batch"))
    )
    waiter.start()
    deadline = time.monotonic() + 30
    while not openai_server.batches:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    [batch_id] = openai_server.batches
    openai_server.batch_polls_left(3)  # 3 lines at the next poll
    while openai_server.batches[batch_id]["_answered"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with openai.OpenAI(base_url=openai_server.url, api_key="k") as other:
        assert other.batches.cancel(batch_id).status == "cancelling"
    waiter.join(30)
    assert [r.error for r in results] == [None] * 3 + ["batch was cancelled before this request ran"] * 6
    assert journal(cache.path) == [(batch_id, "cancelled", 9)] and len(cache) == 3
