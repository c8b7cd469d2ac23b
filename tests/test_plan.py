"""`prefab plan` (calls, tokens and cost before spending) and `budget_usd` (a run that stops before passing it),
against a real OpenAI-compatible server that bills tokens as a server of the embedded model would."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.core.cache import run_cache
from pipeline.core.store import Run

ASPECTS = ["helpfulness", "honesty"]
WORDS = "the model answers with a few plain words about the topic at hand and then stops".split()


def billed_respond(usage: Counter):
    """Replies of 15-45 words (by prompt, temperature and seed), judges' rubrics with rationales of 5-25 words, and
    usage counted by the smollm2 tokenizer with its chat template, as vLLM serving that model would bill them. The
    count is the tokenizer's own (apply_chat_template, tokenized in one step), not prefab's chat_token_ids, whose
    prediction the plan tests check against it."""
    from transformers import AutoTokenizer

    from pipeline.models.embedded import resolve_llm

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("embedded:smollm2"))

    def respond(request: dict) -> dict:
        h = int(
            hashlib.sha256(
                json.dumps([request["messages"], request.get("temperature"), request.get("seed")]).encode()
            ).hexdigest(),
            16,
        )
        if request.get("response_format"):
            kind = "judge"
            content = json.dumps(
                {
                    a: {"rationale": " ".join(WORDS[(h >> i) % 7 :][: 5 + (h >> (i + 3)) % 21]), "score": 1 + h % 5}
                    for i, a in enumerate(ASPECTS)
                }
            )
        else:
            kind = "generate"
            content = " ".join((WORDS * 3)[h % 5 :][: 15 + h % 31])
        prompt = len(
            tokenizer.apply_chat_template(
                request["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        completion = len(tokenizer(content, add_special_tokens=False)["input_ids"])
        usage[kind, "prompt_tokens"] += prompt
        usage[kind, "completion_tokens"] += completion
        usage[kind, "calls"] += 1
        return {"content": content, "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}

    return respond


def write_config(tmp_path: Path, server, n_prompts: int, **top) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"Question {i}: " + "explain, briefly, " * (i % 6) + f"topic number {i}."}) + "\n"
            for i in range(n_prompts)
        )
    )
    model = {
        "backend": "openai",
        "base_url": server.url,
        "max_retries": 0,
        "timeout": 10,
        "tokenizer": "embedded:smollm2",
    }
    config = {
        "run": str(tmp_path / "run"),
        "stages": ["ingest", "generate", "judge"],
        "ingest": {"paths": [str(prompts)]},
        "generate": {
            "generators": [
                {
                    **model,
                    "name": "gen",
                    "model": "gen-model",
                    "temperatures": [0.3, 1.0],
                    "n": 1,
                    "max_tokens": 64,
                    "price_per_mtok_in": 1.0,
                    "price_per_mtok_out": 4.0,
                }
            ]
        },
        "judge": {
            "judges": [
                {**model, "name": "judge", "model": "judge-model", "price_per_mtok_in": 3.0, "price_per_mtok_out": 15.0}
            ],
            "aspects": [{"name": a} for a in ASPECTS],
            "pairwise": False,
        },
        **top,
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return path


def test_plan_with_a_sample_is_within_15_percent_of_what_the_run_then_uses(openai_server, tmp_path, prefab):
    usage = Counter()
    openai_server.respond = billed_respond(usage)
    config = write_config(tmp_path, openai_server, 40)

    result = prefab("plan", config)  # no sample: counts and bounds only, and nothing created
    assert result.exit_code == 0, result.output
    assert openai_server.total == 0 and not (tmp_path / "run").exists()
    assert "max_tokens" in result.output and "80" in result.output

    result = prefab("plan", config, "--sample", "20", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{") :])
    assert (usage["generate", "calls"], usage["judge", "calls"]) == (20, 20)
    rows = {r["stage"]: r for r in plan["rows"]}
    assert rows["generate"]["calls"] == 80 and rows["generate"]["cached"] == 20 and rows["judge"]["calls"] == 80
    assert rows["generate"]["completion_tokens_by"] == "mean of 20" and rows["judge"]["prompt_tokens_by"] == "tokenizer"

    assert prefab("run", config).exit_code == 0
    assert (usage["generate", "calls"], usage["judge", "calls"]) == (80, 80)  # the sampled calls were not paid twice
    for stage in ("generate", "judge"):
        for tokens in ("prompt_tokens", "completion_tokens"):
            planned, used = rows[stage][tokens], usage[stage, tokens]
            assert abs(planned - used) <= 0.15 * used, (stage, tokens, planned, used)
    generate = Run(tmp_path / "run").stage_info("generate")
    assert rows["generate"]["cost_usd"] == pytest.approx(generate["cost_usd"], rel=0.15)

    result = prefab("plan", config, "--json")  # after the run: everything is cached, nothing left to spend
    plan = json.loads(result.output[result.output.index("{") :])
    assert plan["total"]["cached"] == plan["total"]["calls"] == 160 and plan["total"]["to_spend_usd"] == 0
    assert plan["spent_usd"] == pytest.approx(generate["cost_usd"] + plan["rows"][1]["cost_usd"], rel=1e-6)


def test_a_run_stops_before_its_budget_and_resumes_without_repaying(openai_server, tmp_path, prefab):
    usage = Counter()
    openai_server.respond = billed_respond(usage)
    # a call costs about $0.018 at these prices, and at most $0.034 (every prompt byte a token, all 64 output tokens)
    budget = 0.5
    config = write_config(tmp_path, openai_server, 40, budget_usd=budget)
    spec = json.loads(config.read_text())
    spec["generate"]["generators"][0].update(price_per_mtok_in=100.0, price_per_mtok_out=400.0, concurrency=2)
    config.write_text(json.dumps(spec))

    result = prefab("run", config)
    assert result.exit_code == 6, result.output
    assert "budget_usd 0.5 reached" in result.output and "raise budget_usd" in result.output
    cache = run_cache(tmp_path / "run")
    try:
        spent, cached = cache.spent_usd(), len(cache)
    finally:
        cache.close()
    assert 0 < spent <= budget and 0 < cached < 80 and usage["generate", "calls"] == cached
    assert spent > budget - 0.034  # it stopped only when the next call could have passed the budget
    run = Run(tmp_path / "run")
    assert run.has("prompts") and not run.has("candidates")  # what ran before is kept; generate wrote nothing half-done

    spec["budget_usd"] = 5.0
    config.write_text(json.dumps(spec))
    result = prefab("run", config)
    assert result.exit_code == 0, result.output
    assert (
        usage["generate", "calls"] == 80 and run.read("candidates").height == 80
    )  # the finished calls came from the cache
