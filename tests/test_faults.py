"""Fault injection: a long run over a flaky OpenAI-compatible API completes, loses nothing, and stays
within its retry budget. Run alone with `pytest -m faults`."""

import json

import polars as pl
import pytest

from pipeline.core.store import Run

pytestmark = pytest.mark.faults

N_PROMPTS = 2000
MAX_RETRIES = 4
FAULTS = {
    "429": 0.05,
    "429:0.2": 0.03,
    "500": 0.05,
    "503": 0.03,
    "hang": 0.03,
    "reset": 0.03,
    "malformed": 0.02,
    "truncated": 0.02,
    "html": 0.01,
    "wrongjson": 0.01,
    "nochoices": 0.01,
    "nomessage": 0.01,
}  # the last four: 200s that are not completions


def config_text(tmp_path, url) -> str:
    return f"""run: {tmp_path / "run"}
ingest:
  paths: [{tmp_path / "prompts.jsonl"}]
generate:
  generators:
    - name: flaky
      backend: openai
      model: flaky-model
      base_url: {url}
      api_key_env: PREFAB_FAULTS_KEY
      concurrency: 64
      timeout: 1.0
      max_retries: {MAX_RETRIES}
      temperatures: [0.7]
      max_tokens: 16
"""


def test_run_over_flaky_api(tmp_path, openai_server, prefab, monkeypatch):
    assert abs(sum(FAULTS.values()) - 0.30) < 1e-9
    monkeypatch.setenv("PREFAB_FAULTS_KEY", "test-key")
    openai_server.fault_rates = FAULTS
    openai_server.hang_s = 3
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Question number {i}: why?"}) + "\n" for i in range(N_PROMPTS))
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text(config_text(tmp_path, openai_server.url))

    result = prefab("run", cfg)
    assert result.exit_code == 0, result.output
    candidates = Run(tmp_path / "run").read("candidates")
    # every prompt has a candidate: text, or a recorded failure with its reason
    assert candidates.height == N_PROMPTS and candidates["prompt_id"].n_unique() == N_PROMPTS
    ok = candidates.filter(pl.col("error").is_null())
    failed = candidates.filter(pl.col("error").is_not_null())
    assert ok["text"].null_count() == 0
    assert failed["error"].str.len_chars().min() or failed.height == 0
    assert failed.height < N_PROMPTS * 0.01  # 0.3^5 of calls exhaust 4 retries: ~5 expected
    # the retry budget: no call was sent more than 1 + max_retries times, whatever mix of faults it met
    assert max(openai_server.prompt_counts.values()) <= 1 + MAX_RETRIES
    assert openai_server.total <= N_PROMPTS * (1 + MAX_RETRIES)
    assert openai_server.total < N_PROMPTS * 1.7  # expected about 1 / (1 - 0.3) = 1.43 requests per prompt
    faults_seen = {s for s in openai_server.statuses if s != "200"}
    assert len(faults_seen) >= 10, openai_server.statuses

    # a second run repays nothing; --retry-failed asks again only for the failures
    before = openai_server.total
    assert prefab("run", cfg).exit_code == 0
    assert openai_server.total == before
    openai_server.fault_rates = {}
    assert prefab("generate", "--run", tmp_path / "run", "--retry-failed").exit_code == 0
    assert openai_server.total - before == failed.height
    again = Run(tmp_path / "run").read("candidates")
    assert again["error"].null_count() == N_PROMPTS
    assert (
        again.select("candidate_id", "prompt_id")
        .sort("candidate_id")
        .equals(candidates.select("candidate_id", "prompt_id").sort("candidate_id"))
    )
