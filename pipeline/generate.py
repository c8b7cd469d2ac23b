"""Generate candidates: every prompt x generator x temperature x sample, through pipeline.llm.

Sample i of a generator uses seed + i, so samples differ yet every re-run asks the same requests (and
gets them from the call cache). A failed call becomes a row with its error and no text; it is never
dropped. Re-running the stage keeps recorded failures as they are (retrying costs money and a refusal
fails again); `prefab generate --retry-failed` calls them again and keeps everything else. A killed run
has written no table yet, so running it again calls everything still missing, finished calls from the cache.
"""

import polars as pl

from pipeline.cache import CallCache, run_cache
from pipeline.config import GeneratorSpec
from pipeline.llm import Request, call_cost, call_llm, check_spec
from pipeline.progress import summary
from pipeline.queries import active_prompts
from pipeline.schema import TABLES
from pipeline.store import Run, candidate_id

SECTION = "generate"  # the config section this stage needs (pipeline/registry.py)
ORDER = 30  # its place in `prefab run`


def plan(prompts: pl.DataFrame, generators: list[GeneratorSpec]) -> list[tuple[GeneratorSpec, dict, Request]]:
    """(generator, candidate row without results, request) for every candidate, in a stable order."""
    out = []
    for spec in generators:
        stop = list(spec.stop)
        for prompt_id, messages in zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()):
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
            for temperature in spec.temperatures:
                params = {"temperature": temperature, "top_p": spec.top_p, "max_tokens": spec.max_tokens, "seed": spec.seed, "stop": stop}
                for i in range(spec.n):
                    row = {"candidate_id": candidate_id(prompt_id, spec.label, params, i), "prompt_id": prompt_id, "model": spec.label,
                           "temperature": temperature, "top_p": spec.top_p, "sample_index": i}
                    request = Request(messages, temperature=temperature, top_p=spec.top_p, max_tokens=spec.max_tokens,
                                      seed=None if spec.seed is None else spec.seed + i, stop=stop or None)
                    out.append((spec, row, request))
    return out


def generate_with_counts(prompts: pl.DataFrame, generators: list[GeneratorSpec], cache: CallCache, retry_failed: bool = False,
                         previous: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict]:
    """The candidates table and the counts for the manifest (calls made, cached, tokens, cost)."""
    kept = {}  # candidate_id -> earlier failed row, kept unless retrying
    if previous is not None and not retry_failed and previous.height:
        for row in previous.filter(pl.col("error").is_not_null()).iter_rows(named=True):
            kept[row["candidate_id"]] = row
    planned = plan(prompts, generators)
    rows: list[dict | None] = [None] * len(planned)
    calls = cached = 0
    cost = 0.0
    for spec in generators:
        mine = [j for j, (s, row, _) in enumerate(planned) if s is spec and row["candidate_id"] not in kept]
        results = call_llm(spec, [planned[j][2] for j in mine], cache, f"generate {spec.label}")
        for j, result in zip(mine, results):
            cached += result.cached
            calls += not result.cached
            rows[j] = {**planned[j][1], **{k: getattr(result, k) for k in ("text", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "error")}}
        for j, (s, row, _) in enumerate(planned):
            if s is spec and rows[j] is None:
                rows[j] = kept[row["candidate_id"]]
        for j, (s, _, _) in enumerate(planned):
            r = rows[j]
            if s is spec and r["error"] is None:
                cost += call_cost(spec, r["prompt_tokens"], r["completion_tokens"])
    df = pl.DataFrame(rows, schema=TABLES["candidates"], orient="row") if rows else pl.DataFrame(schema=TABLES["candidates"])
    failed = df.filter(pl.col("error").is_not_null())
    counts = {
        "candidates": df.height,
        "ok": df.height - failed.height,
        "failed": failed.height,
        "failed_kept": sum(1 for r in rows if r is not None and r["candidate_id"] in kept),
        "calls": calls,
        "cached": cached,
        "prompt_tokens": int(df["prompt_tokens"].sum() or 0),
        "completion_tokens": int(df["completion_tokens"].sum() or 0),
        "cost_usd": round(cost, 6),
    }
    return df, counts


def generate(prompts: pl.DataFrame, generators: list[GeneratorSpec], cache: CallCache, retry_failed: bool = False,
             previous: pl.DataFrame | None = None) -> pl.DataFrame:
    """Candidates for the prompts (a prompts-table frame) from each generator; see the module docstring."""
    return generate_with_counts(prompts, generators, cache, retry_failed, previous)[0]


def step(config, run: Run, retry_failed: bool = False) -> dict:
    """Read the kept prompts, generate (cache first), write candidates, print and return the counts."""
    generators = config.require(SECTION, hint="add `generate: {generators: [{backend: transformers, model: embedded:smollm2}]}`").generators
    prompts = active_prompts(run.read("prompts"))  # duplicates and sampled-out prompts are not generated for
    previous = run.read("candidates") if run.has("candidates") else None
    for spec in generators:
        check_spec(spec)
    cache = run_cache(run.path)
    try:
        df, counts = generate_with_counts(prompts, generators, cache, retry_failed, previous)
    finally:
        cache.close()
    run.write("candidates", df)
    errors = df.filter(pl.col("error").is_not_null()).group_by("error").len().sort("len", descending=True).head(3)
    summary("generate", {**counts, **{f"error: {e[:60]}": n for e, n in errors.iter_rows()}})
    if counts["failed"] and not counts["ok"]:
        raise run.every_call_failed("generate", "candidates", "calls", f"most often: {errors.row(0)[0]}",
                                    f"prefab generate --run {run.path} --retry-failed", **counts)
    if counts["failed"]:
        from pipeline.progress import console

        console.print(f"[yellow]{counts['failed']} failed call(s) recorded with their error; "
                      f"`prefab generate --run {run.path} --retry-failed` calls them again[/yellow]")
    return counts
