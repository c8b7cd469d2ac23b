"""`prefab plan CONFIG`: a run's model calls, tokens and cost, per stage and model, before anything is spent.

Prompt tokens are counted with the model's tokenizer where one is at hand (`tokenizer:` on a model, or a
transformers model's own), else estimated at ~4 characters a token; each row says which. Completion tokens
are what the model was measured to write: the cached answers to this run's own requests. `--sample N`
first makes N generation calls per generator and judges their answers (through the call cache, so the run
does not pay for them again); with nothing measured, max_tokens is the bound and the row says so. Judge
calls are planned from the candidates (and pairwise calls from the pairs) once those exist, else from the
prompts and the expected answer lengths. Calibration on gold pairs is not counted.
"""

import statistics
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from rich.table import Table

from pipeline.core import runner
from pipeline.core.cache import CallCache, run_cache, spending_limit
from pipeline.core.config import Config
from pipeline.core.progress import console
from pipeline.core.queries import active_prompts
from pipeline.core.store import Run
from pipeline.models.backends import DEFAULT_MAX_TOKENS, estimate_prompt_tokens
from pipeline.models.checkpoints import load_tokenizer
from pipeline.models.llm import cache_keys, call_cost, call_llm
from pipeline.models.llm_transformers import TOKENIZER_HINT, chat_token_ids
from pipeline.stages import generate
from pipeline.stages.ingest import ingest
from pipeline.stages.judge import attempt_request, pair_requests, scoring_requests


def token_counter(spec):
    """(count(conversations) -> prompt tokens of each, how they are counted)."""
    name = spec.tokenizer or (spec.model if spec.backend == "transformers" else None)
    if name is None:
        return (lambda conversations: [estimate_prompt_tokens(c) for c in conversations]), "4 chars"
    tokenizer = load_tokenizer(name, hint=TOKENIZER_HINT)
    return (lambda conversations: [len(ids) for ids in chat_token_ids(tokenizer, conversations)]), "tokenizer"


def plan_with_cache(config: Config, sample: int = 0) -> dict:
    """`prefab plan`: plan_run with the run's call cache where there is one (or where `sample` calls are to be made
    and kept), under the config's spending limit. A plan alone creates nothing in the run directory."""
    cache = run_cache(config.run) if sample or (Path(config.run) / "cache.sqlite").exists() else None
    try:
        with spending_limit(config.budget_usd):
            return plan_run(config, cache, sample)
    finally:
        if cache is not None:
            cache.close()


def plan_run(config: Config, cache: CallCache | None, sample: int = 0) -> dict:
    """{"rows": one per stage and model, "total", "spent_usd", "budget_usd"}; `sample` calls go through `cache`."""
    run = Run(config.run)
    stages = runner.planned(config)
    prompts = _prompts(config, run)
    read = prompts.height
    target = (
        config.dedup.target_size
        if config.dedup is not None and "dedup" in stages and not run.is_complete("dedup")
        else None
    )
    if target and target < prompts.height:  # dedup will keep about this many: plan on as many, spread over the input
        prompts = prompts[_spread(list(range(prompts.height)), target)]
    rows, expected, answers = [], {}, []
    if "generate" in stages:
        for spec in config.require("generate").generators:
            row, expected[spec.label], sampled = _plan_generate(spec, prompts, cache, sample)
            rows.append(row)
            answers += sampled
    judge = config.judge
    llm_judges = judge.judges if judge is not None and not judge.reward_models else []
    if "judge" in stages:
        items = _candidate_items(config, run, prompts, expected)
        rows += [_plan_judge(spec, judge, items, cache, answers[:sample] if sample else []) for spec in llm_judges]
    if "route" in stages and judge is not None and judge.pairwise:
        items = _pair_items(config, run, prompts, expected)
        rows += [_plan_pairwise(spec, judge, items, cache) for spec in (judge.judges if judge is not None else [])]
    total = {
        k: sum(r[k] for r in rows)
        for k in ("calls", "cached", "prompt_tokens", "completion_tokens", "cost_usd", "to_spend_usd")
    }
    return {
        "rows": rows,
        "total": total,
        "prompts": prompts.height,
        "prompts_read": read,
        "spent_usd": cache.spent_usd() if cache else 0.0,
        "budget_usd": config.budget_usd,
    }


def _prompts(config: Config, run) -> pl.DataFrame:
    """The run's kept prompts once ingested (and deduplicated), else what ingest would read."""
    if run.has("prompts"):
        return active_prompts(run.read("prompts"))
    return ingest(config.ingest, resolve=config.resolve)[0]


def _conversation(messages) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _row(
    stage: str,
    spec,
    requests: Sequence,
    prompt_tokens: Sequence[float],
    completion_tokens: Sequence[float],
    hits: dict,
    keys: Sequence[str | None],
    weights: Sequence[float],
    counted: str,
    basis: str,
) -> dict:
    """Sum a stage's planned requests (each standing for `weight` calls); cached ones count their recorded tokens."""
    calls = cached = p_all = c_all = p_new = c_new = 0.0
    for _request, p, c, key, w in zip(requests, prompt_tokens, completion_tokens, keys, weights, strict=True):
        hit = hits.get(key) if key is not None else None
        if hit is not None:
            p, c = hit.get("prompt_tokens") or p, hit.get("completion_tokens") or c
            cached += w
        else:
            p_new, c_new = p_new + w * p, c_new + w * c
        calls, p_all, c_all = calls + w, p_all + w * p, c_all + w * c
    return {
        "stage": stage,
        "model": spec.label,
        "calls": round(calls),
        "cached": round(cached),
        "prompt_tokens": round(p_all),
        "completion_tokens": round(c_all),
        "cost_usd": round(call_cost(spec, p_all, c_all), 6),
        "to_spend_usd": round(call_cost(spec, p_new, c_new), 6),
        "prompt_tokens_by": counted,
        "completion_tokens_by": basis,
    }


def _measured(hits: dict, keys) -> list[int]:
    return [hits[k]["completion_tokens"] for k in keys if k in hits and hits[k].get("completion_tokens") is not None]


def _expected(measured: list[int], bound: int) -> tuple[float, str]:
    if measured:
        return statistics.fmean(measured), f"mean of {len(measured)}"
    return float(bound), "max_tokens"


def _spread(indices: list[int], n: int) -> list[int]:
    """n of the indices, evenly spread (a sample of the whole run, not its first prompts)."""
    if n >= len(indices):
        return indices
    return [indices[round(i * len(indices) / n)] for i in range(n)]


def _plan_generate(spec, prompts: pl.DataFrame, cache, sample: int):
    """(row, expected completion tokens of one answer, [(messages, text)] of the sampled answers)."""
    planned = generate.plan(prompts, [spec])
    requests = [r for _, _, r in planned]
    keys = cache_keys(spec, requests)
    sampled = []
    hits = cache.get_many(list(dict.fromkeys(keys))) if cache is not None else {}
    if sample and cache is not None:
        pick = _spread([i for i, k in enumerate(keys) if k not in hits], sample)
        results = call_llm(spec, [requests[i] for i in pick], cache, f"sample {spec.label}")
        sampled = [(requests[i].messages, r.text) for i, r in zip(pick, results, strict=True) if r.error is None]
        hits.update((keys[i], r.cache_row()) for i, r in zip(pick, results, strict=True) if r.error is None)
    count, counted = token_counter(spec)
    per_prompt = dict(
        zip(
            prompts["prompt_id"].to_list(),
            count([_conversation(m) for m in prompts["messages"].to_list()]),
            strict=True,
        )
    )
    expected, basis = _expected(_measured(hits, dict.fromkeys(keys)), spec.max_tokens or DEFAULT_MAX_TOKENS)
    row = _row(
        "generate",
        spec,
        requests,
        [per_prompt[row["prompt_id"]] for _, row, _ in planned],
        [expected] * len(requests),
        hits,
        keys,
        [1] * len(requests),
        counted,
        basis,
    )
    return row, expected, sampled


def _candidate_items(config: Config, run, prompts: pl.DataFrame, expected: dict) -> list[tuple]:
    """(messages, response, calls it stands for, tokens to add for the response): the real candidates once
    generated, else one stand-in per prompt and generator, as long as that generator's expected answer."""
    if run.has("candidates"):
        messages = dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list(), strict=True))
        ok = run.read("candidates").filter(pl.col("text").is_not_null() & pl.col("prompt_id").is_in(list(messages)))
        return [(_conversation(messages[p]), text, 1, 0) for p, text in ok.select("prompt_id", "text").iter_rows()]
    return [
        (_conversation(m), "", len(g.temperatures) * g.n, expected.get(g.label, g.max_tokens or DEFAULT_MAX_TOKENS))
        for m in prompts["messages"].to_list()
        for g in (config.generate.generators if config.generate else [])
    ]


def _pair_items(config: Config, run, prompts: pl.DataFrame, expected: dict) -> list[tuple]:
    """(messages, first, second, calls it stands for, tokens to add for the two responses): the real pairs once
    built, else per prompt one pair (best_vs_*) or every two candidates (all_above_margin: an upper bound)."""
    messages = dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list(), strict=True))
    if run.has("pairs") and run.has("candidates"):
        text = dict(run.read("candidates").select("candidate_id", "text").iter_rows())
        pairs = run.read("pairs").filter(pl.col("prompt_id").is_in(list(messages)))
        return [
            (_conversation(messages[p]), text[c], text[r], 1, 0)
            for p, c, r in pairs.select("prompt_id", "chosen_id", "rejected_id").iter_rows()
        ]
    generators = config.generate.generators if config.generate else []
    k = sum(len(g.temperatures) * g.n for g in generators)
    if k < 2:
        return []
    per_prompt = k * (k - 1) / 2 if config.pair is not None and config.pair.strategy == "all_above_margin" else 1
    answer = statistics.fmean(expected.get(g.label, g.max_tokens or DEFAULT_MAX_TOKENS) for g in generators)
    return [(_conversation(m), "", "", per_prompt, 2 * answer) for m in prompts["messages"].to_list()]


def _plan_judge(spec, cfg, items: list[tuple], cache, sampled: list[tuple]) -> dict:
    per_item = len(cfg.aspects) if cfg.scoring == "logprobs" else 1
    sampled_results = []
    if sampled and cache is not None:  # judge the sampled answers, as the judge stage will (the same requests)
        sampled_results = call_llm(
            spec,
            [attempt_request(r, cfg, 0) for r in scoring_requests(spec, sampled, cfg.aspects, cfg)],
            cache,
            f"sample {spec.label}",
        )
    requests = [
        attempt_request(r, cfg, 0) for r in scoring_requests(spec, [(m, t) for m, t, _, _ in items], cfg.aspects, cfg)
    ]
    weights = [w for _, _, w, _ in items for _ in range(per_item)]
    extra = [x for _, _, _, x in items for _ in range(per_item)]
    keys, hits = _lookup(spec, requests, cache, real=bool(items) and items[0][3] == 0)
    measured = [r.completion_tokens for r in sampled_results if r.completion_tokens is not None] + _measured(
        hits, dict.fromkeys(keys)
    )
    expected, basis = (1.0, "one token") if cfg.scoring == "logprobs" else _expected(measured, cfg.max_tokens)
    return _judge_row("judge", spec, requests, extra, weights, keys, hits, expected, basis)


def _plan_pairwise(spec, cfg, items: list[tuple], cache) -> dict:
    requests = [attempt_request(r, cfg, 0) for r in pair_requests(spec, [(m, a, b) for m, a, b, _, _ in items], cfg)]
    weights = [w for *_, w, _ in items for _ in range(2)]
    extra = [x for *_, x in items for _ in range(2)]
    keys, hits = _lookup(spec, requests, cache, real=bool(items) and items[0][4] == 0)
    by_token = cfg.scoring == "logprobs"
    expected, basis = (
        (1.0, "one token") if by_token else _expected(_measured(hits, dict.fromkeys(keys)), cfg.max_tokens)
    )
    return _judge_row("route", spec, requests, extra, weights, keys, hits, expected, basis)


def _lookup(spec, requests, cache, real: bool) -> tuple[list, dict]:
    """Cache keys and hits of requests built from real candidates or pairs (the stage's own requests); stand-ins have
    none."""
    if cache is None or not real:
        return [None] * len(requests), {}
    keys = cache_keys(spec, requests)
    return keys, cache.get_many(list(dict.fromkeys(keys)))


def _judge_row(stage, spec, requests, extra, weights, keys, hits, expected, basis) -> dict:
    count, counted = token_counter(spec)
    prompt_tokens = [n + x for n, x in zip(count([r.messages for r in requests]), extra, strict=True)]
    return _row(stage, spec, requests, prompt_tokens, [expected] * len(requests), hits, keys, weights, counted, basis)


def print_plan(plan: dict) -> None:
    kept = (
        "" if plan["prompts"] == plan["prompts_read"] else f" (of {plan['prompts_read']:,} read: dedup's target_size)"
    )
    table = Table(
        title=f"plan: {plan['prompts']:,} prompts{kept}",
        caption="prompt tokens by the model's tokenizer, or at 4 characters a "
        "token; completion tokens the mean of measured answers (--sample N measures), or max_tokens (an upper bound)",
    )
    for col in ("stage", "model", "calls", "cached", "prompt tokens", "by", "completion tokens", "by", "to spend"):
        table.add_column(col, justify="left" if col in ("stage", "model", "by") else "right")
    for r in plan["rows"]:
        table.add_row(
            r["stage"],
            r["model"],
            f"{r['calls']:,}",
            f"{r['cached']:,}",
            f"{r['prompt_tokens']:,}",
            r["prompt_tokens_by"],
            f"{r['completion_tokens']:,}",
            r["completion_tokens_by"],
            f"${r['to_spend_usd']:,.4f}",
        )
    t = plan["total"]
    table.add_row(
        "total",
        "",
        f"{t['calls']:,}",
        f"{t['cached']:,}",
        f"{t['prompt_tokens']:,}",
        "",
        f"{t['completion_tokens']:,}",
        "",
        f"${t['to_spend_usd']:,.4f}",
        style="bold",
    )
    console.print(table)
    spent, budget = plan["spent_usd"], plan["budget_usd"]
    line = f"spent so far: ${spent:,.4f}; still to spend: ${t['to_spend_usd']:,.4f}"
    if budget is not None:
        fits = spent + t["to_spend_usd"] <= budget
        line += f"; budget_usd {budget:g}: " + (
            "fits"
            if fits
            else f"[red]short by ${spent + t['to_spend_usd'] - budget:,.4f}[/red] "
            "(the run stops before a call that could pass it; finished calls are kept)"
        )
    console.print(line)
