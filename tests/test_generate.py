"""The generate stage: rows and seeds on the in-process fake backend; failures, --retry-failed, kill -9 and resume
against a real OpenAI-compatible server."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from openai_server import default_respond

from pipeline.core.cache import CallCache
from pipeline.core.config import GeneratorSpec
from pipeline.core.schema import TABLES
from pipeline.core.store import Run, prompt_id
from pipeline.stages.generate import generate

ROOT = Path(__file__).resolve().parent.parent


def prompts_frame(texts: list[str]) -> pl.DataFrame:
    rows = [
        {
            "prompt_id": prompt_id([{"role": "user", "content": t}]),
            "messages": [{"role": "user", "content": t}],
            "source": "test",
            "source_line": i + 1,
            "category": None,
            "duplicate_of": None,
            "cluster": None,
        }
        for i, t in enumerate(texts)
    ]
    return pl.DataFrame(rows, schema=TABLES["prompts"])


def generator(server, **kw) -> GeneratorSpec:
    kw = {
        "name": "fake",
        "backend": "openai",
        "model": "fake-model",
        "base_url": server.url,
        "max_retries": 1,
        "timeout": 5,
        **kw,
    }
    return GeneratorSpec(**kw)


def write_config(tmp_path: Path, server, n_prompts: int, part_size: int = 2000, **gen) -> Path:
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
        **gen,
    }
    config = {
        "run": str(tmp_path / "run"),
        "stages": ["ingest", "generate"],
        "ingest": {"paths": [str(prompts)]},
        "generate": {"generators": [gen], "part_size": part_size},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_every_prompt_temperature_and_sample_gets_a_candidate(fake_backend, tmp_path):
    """What generate itself decides needs only answers, so no server: the in-process fake backend gives them."""
    prompts = prompts_frame(["What is rust?", "Write a limerick.", "Explain TCP."])
    spec = GeneratorSpec(name="fake", backend="fake", model="fake-model", temperatures=[0.3, 0.7], n=2, seed=10)
    cache = CallCache(tmp_path / "cache.sqlite")
    df = generate(prompts, [spec], cache)
    assert df.height == 12 and df["candidate_id"].n_unique() == 12
    assert df.schema == pl.Schema(TABLES["candidates"])
    assert df["error"].null_count() == 12
    # sample i is asked with seed + i, so the samples of one prompt and temperature differ
    seeds = Counter((r.messages[0]["content"], r.temperature, r.seed) for r in fake_backend.requests)
    assert set(s for _, _, s in seeds) == {10, 11} and max(seeds.values()) == 1
    first = df.filter(pl.col("prompt_id") == prompts["prompt_id"][0], pl.col("temperature") == 0.3).sort("sample_index")
    assert first["text"].to_list() == [
        default_respond({"messages": [{"role": "user", "content": "What is rust?"}], "temperature": 0.3, "seed": s})
        for s in (10, 11)
    ]
    assert df["prompt_tokens"].to_list() == [3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2] and (df["completion_tokens"] > 0).all()

    again = generate(prompts, [spec], cache)
    assert len(fake_backend.requests) == 12  # all from the cache
    assert again.equals(df)


def test_stage_writes_candidates_counts_tokens_and_cost_and_reruns_for_free(openai_server, tmp_path, prefab):
    config = write_config(tmp_path, openai_server, 5, price_per_mtok_in=1000.0, price_per_mtok_out=2000.0)
    result = prefab("run", config)
    assert result.exit_code == 0, result.output
    run = Run(tmp_path / "run")
    df = run.read("candidates")
    assert df.height == 5 * 2 * 2 and openai_server.total == 20
    info = run.stage_info("generate")
    assert info["status"] == "complete" and info["calls"] == 20 and info["cached"] == 0 and info["failed"] == 0
    assert info["prompt_tokens"] == df["prompt_tokens"].sum() > 0
    assert info["cost_usd"] == pytest.approx(
        (df["prompt_tokens"].sum() * 1000 + df["completion_tokens"].sum() * 2000) / 1e6
    )

    result = prefab("run", config)  # complete stages are skipped
    assert result.exit_code == 0 and "nothing" in result.output
    result = prefab("generate", "--run", tmp_path / "run")  # an explicit re-run comes from the cache
    assert result.exit_code == 0, result.output
    assert (
        openai_server.total == 20
        and run.stage_info("generate")["calls"] == 0
        and run.stage_info("generate")["cached"] == 20
    )
    assert run.read("candidates").equals(df)


@pytest.mark.parametrize("fault", ["html", "wrongjson", "nochoices", "nomessage", "malformed"])
def test_a_200_that_is_not_a_completion_is_a_recorded_failure_not_a_crash(
    openai_server, tmp_path, prefab, fault, fast_backoff
):
    """A proxy's error page or a misrouted base_url answering 200: retried within max_retries, then recorded
    with its reason like a 500; the table is written and a rerun does not crash either."""
    broken = "Prompt number 1: tell me about topic 1."
    openai_server.respond = lambda r: {"fault": fault} if r["messages"][-1]["content"] == broken else default_respond(r)
    config = write_config(tmp_path, openai_server, 3, n=1, temperatures=[0.5], max_retries=2)
    result = prefab("run", config)
    assert result.exit_code == 0, result.output
    df = Run(tmp_path / "run").read("candidates")
    failed = df.filter(pl.col("error").is_not_null())
    assert df.height == 3 and failed.height == 1
    assert failed["error"][0].startswith("malformed answer: ") and failed["error"][0].endswith("(3 attempts)")
    assert openai_server.prompt_counts[broken] == 3
    assert prefab("generate", "--run", tmp_path / "run", "--retry-failed").exit_code == 0
    assert openai_server.prompt_counts[broken] == 6


def test_failures_are_recorded_kept_and_retried_on_request(openai_server, tmp_path, prefab):
    broken = {"Prompt number 1: tell me about topic 1.", "Prompt number 3: tell me about topic 3."}
    openai_server.respond = lambda r: {"fault": "503"} if r["messages"][-1]["content"] in broken else default_respond(r)
    config = write_config(tmp_path, openai_server, 4, n=1, temperatures=[0.5], max_retries=0)
    assert prefab("run", config).exit_code == 0
    run = Run(tmp_path / "run")
    df = run.read("candidates")
    failed = df.filter(pl.col("error").is_not_null())
    assert df.height == 4 and failed.height == 2
    assert (
        failed["error"].to_list() == ["HTTP 503: The engine is currently overloaded"] * 2
        and failed["text"].null_count() == 2
    )
    assert run.stage_info("generate")["failed"] == 2

    # a plain re-run keeps the recorded failures and calls nothing
    calls = openai_server.total
    assert prefab("generate", "--run", run.path).exit_code == 0
    assert openai_server.total == calls and run.read("candidates").equals(df)

    # --retry-failed calls exactly the failed ones again and keeps the rest
    openai_server.respond = default_respond
    result = prefab("generate", "--run", run.path, "--retry-failed")
    assert result.exit_code == 0, result.output
    assert openai_server.total == calls + 2
    retried = run.read("candidates")
    assert retried["error"].null_count() == 4 and retried["candidate_id"].to_list() == df["candidate_id"].to_list()
    ok_before = df.filter(pl.col("error").is_null())
    assert retried.filter(pl.col("candidate_id").is_in(ok_before["candidate_id"].implode())).equals(ok_before)


@pytest.mark.slow
def test_kill_9_mid_generate_then_resume_repeats_no_finished_call(openai_server, tmp_path, prefab):
    openai_server.latency = 0.1
    n_prompts, concurrency = 20, 4
    total = n_prompts * 2 * 2
    (tmp_path / "a").mkdir()
    config = write_config(tmp_path / "a", openai_server, n_prompts, concurrency=concurrency)
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
    while _cached(cache_path) < total // 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "generate never got going"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = Run(tmp_path / "a" / "run")
    assert not run.has("candidates") and run.stage_info("generate").get("status") != "complete"
    finished = {json.dumps(r, sort_keys=True) for r in _cached_requests(cache_path)}
    assert total // 4 <= len(finished) < total
    before = openai_server.total

    result = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.cli", "run", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    # no finished request was sent again; every other one exactly once more
    assert openai_server.total - before == total - len(finished)
    sent_after = Counter(_request_of(b) for b in openai_server.bodies[before:])
    assert not finished & set(sent_after) and max(sent_after.values()) == 1
    resumed = run.read("candidates")
    assert run.stage_info("generate")["status"] == "complete"
    assert run.stage_info("generate")["cached"] == len(finished) and run.stage_info("generate")["calls"] == total - len(
        finished
    )

    # identical to a run that was never interrupted
    (tmp_path / "b").mkdir()
    fresh_config = write_config(tmp_path / "b", openai_server, n_prompts, concurrency=concurrency)
    assert prefab("run", fresh_config).exit_code == 0
    fresh = Run(tmp_path / "b" / "run").read("candidates")
    assert resumed.shape == fresh.shape == (total, len(TABLES["candidates"]))
    assert resumed.drop("latency_s").equals(fresh.drop("latency_s"))


def test_kill_9_mid_streamed_generate_resumes_after_its_written_parts(openai_server, tmp_path, prefab):
    """Parts of 5 prompts (20 calls each): killed once two parts are on disk, the run skips them (reading nothing of
    them from the cache), repays no finished call, and ends with the table of a run never interrupted."""
    openai_server.latency = 0.05
    n_prompts, total = 30, 30 * 2 * 2
    (tmp_path / "a").mkdir()
    config = write_config(tmp_path / "a", openai_server, n_prompts, part_size=5, concurrency=4)
    parts = tmp_path / "a" / "run" / ".parts" / "candidates"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.commands.cli", "run", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(list(parts.glob("*.parquet"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no part was written"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(parts.glob("*.parquet")))
    run = Run(tmp_path / "a" / "run")
    assert not run.has("candidates") and 2 <= written < 6
    finished = {json.dumps(r, sort_keys=True) for r in _cached_requests(tmp_path / "a" / "run" / "cache.sqlite")}
    before = openai_server.total

    result = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.cli", "run", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    sent_after = Counter(_request_of(b) for b in openai_server.bodies[before:])
    assert (
        not finished & set(sent_after)
        and max(sent_after.values()) == 1
        and openai_server.total - before == total - len(finished)
    )
    info = run.stage_info("generate")
    assert info["parts_resumed"] == written and info["cached"] == len(finished) - 20 * written
    assert not parts.exists()

    (tmp_path / "b").mkdir()
    assert (
        prefab("run", write_config(tmp_path / "b", openai_server, n_prompts, part_size=5, concurrency=4)).exit_code == 0
    )
    fresh = Run(tmp_path / "b" / "run").read("candidates")
    assert run.read("candidates").drop("latency_s").equals(fresh.drop("latency_s")) and fresh.height == total


def _cached(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT count(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _cached_requests(path: Path) -> list[dict]:
    with sqlite3.connect(path) as db:
        return [json.loads(r) for (r,) in db.execute("SELECT request FROM calls")]


def _request_of(body: dict) -> str:
    """The body the server got, as pipeline.models.llm stores its request (no model, no empty fields)."""
    return json.dumps({k: v for k, v in body.items() if k != "model" and v not in (None, [], "")}, sort_keys=True)


def test_a_stage_where_every_call_failed_exits_non_zero_and_keeps_what_it_recorded(openai_server, tmp_path, prefab):
    """A misrouted base_url answering HTML to everything: the run stops loudly at generate (not at a later
    stage with nothing to do), the failures are kept with their reason, and --retry-failed recovers."""
    openai_server.fault_rates = {"html": 1.0}
    config = write_config(tmp_path, openai_server, 3, n=1, temperatures=[0.5], max_retries=0)
    result = prefab("run", config)
    assert result.exit_code == 3, result.output
    assert "every one of the 3 calls failed" in result.output and "malformed answer" in result.output
    assert "--retry-failed" in result.output and "Traceback" not in result.output
    run = Run(tmp_path / "run")
    assert run.read("candidates")["error"].null_count() == 0 and run.read("candidates").height == 3
    assert run.stage_info("generate")["status"] == "failed" and run.stage_info("generate")["failed"] == 3

    openai_server.fault_rates = {}
    assert prefab("generate", "--run", run.path, "--retry-failed").exit_code == 0
    assert run.read("candidates")["error"].null_count() == 3 and run.stage_info("generate")["status"] == "complete"
