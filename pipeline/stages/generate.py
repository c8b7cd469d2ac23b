"""Generate candidates: every prompt x generator x temperature x sample, through pipeline.models.llm.

Sample i of a generator uses seed + i, so samples differ yet every re-run asks the same requests (and
gets them from the call cache). A failed call becomes a row with its error and no text; it is never
dropped. Re-running the stage keeps recorded failures as they are (retrying costs money and a refusal
fails again); `prefab generate --retry-failed` calls them again and keeps everything else.

The stage goes through the prompts in parts (`part_size` prompts), writing each part's candidates as it finishes
(pipeline.core.store.TableParts), so its memory does not grow with the number of prompts; at the end the parts
are streamed into candidates.parquet. A killed run keeps its written parts; running it again skips them and
asks what is still missing, finished calls from the cache.
"""

import polars as pl

from pipeline.core.cache import CallCache, run_cache
from pipeline.core.config import Config, GenerateConfig, GeneratorSpec
from pipeline.core.progress import console, summary
from pipeline.core.queries import active_prompts
from pipeline.core.schema import TABLES
from pipeline.core.stage import Stage
from pipeline.core.store import Run, TableParts, candidate_id, content_id
from pipeline.models.checkpoints import local_fingerprints
from pipeline.models.llm import Request, call_cost, call_llm, check_spec, part_size, ticker


def plan(prompts: pl.DataFrame, generators: list[GeneratorSpec]) -> list[tuple[GeneratorSpec, dict, Request]]:
    """(generator, candidate row without results, request) for every candidate, in a stable order."""
    out = []
    for spec in generators:
        stop = list(spec.stop)
        for prompt_id, messages in zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list(), strict=True):
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
            for temperature in spec.temperatures:
                params = {
                    "temperature": temperature,
                    "top_p": spec.top_p,
                    "max_tokens": spec.max_tokens,
                    "seed": spec.seed,
                    "stop": stop,
                }
                for i in range(spec.n):
                    row = {
                        "candidate_id": candidate_id(prompt_id, spec.label, params, i),
                        "prompt_id": prompt_id,
                        "model": spec.label,
                        "temperature": temperature,
                        "top_p": spec.top_p,
                        "sample_index": i,
                    }
                    request = Request(
                        messages,
                        temperature=temperature,
                        top_p=spec.top_p,
                        max_tokens=spec.max_tokens,
                        seed=None if spec.seed is None else spec.seed + i,
                        stop=stop or None,
                    )
                    out.append((spec, row, request))
    return out


def generate_part(
    prompts: pl.DataFrame, generators: list[GeneratorSpec], cache: CallCache, kept: dict, tick=None
) -> tuple[pl.DataFrame, dict]:
    """Candidates of these prompts, and how many were called, came from the cache, or are earlier failures kept."""
    planned = plan(prompts, generators)
    rows: list[dict | None] = [None] * len(planned)
    calls = cached = 0
    for spec in generators:
        mine = [j for j, (s, row, _) in enumerate(planned) if s is spec and row["candidate_id"] not in kept]
        results = call_llm(spec, [planned[j][2] for j in mine], cache, f"generate {spec.label}", tick=tick)
        for j, result in zip(mine, results, strict=True):
            cached += result.cached
            calls += not result.cached
            rows[j] = {
                **planned[j][1],
                **{
                    k: getattr(result, k)
                    for k in ("text", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "error")
                },
            }
    failed_kept = 0
    for j, (_, row, _) in enumerate(planned):
        if rows[j] is None:
            rows[j] = kept[row["candidate_id"]]
            failed_kept += 1
            if tick:
                tick(1, cached=True)
    df = (
        pl.DataFrame(rows, schema=TABLES["candidates"], orient="row")
        if rows
        else pl.DataFrame(schema=TABLES["candidates"])
    )
    return df, {"calls": calls, "cached": cached, "failed_kept": failed_kept}


def table_counts(candidates: pl.LazyFrame, generators: list[GeneratorSpec]) -> dict:
    """Rows, failures, tokens and cost (at each generator's prices) of a candidates table, read lazily."""
    by_model = (
        candidates.group_by("model")
        .agg(
            pl.len().alias("candidates"),
            pl.col("error").is_not_null().sum().alias("failed"),
            pl.col("prompt_tokens").filter(pl.col("error").is_null()).sum().alias("prompt_tokens"),
            pl.col("completion_tokens").filter(pl.col("error").is_null()).sum().alias("completion_tokens"),
        )
        .collect()
    )
    price = {g.label: g for g in generators}
    counts: dict[str, int | float] = {
        "candidates": int(by_model["candidates"].sum() or 0),
        "failed": int(by_model["failed"].sum() or 0),
    }
    counts["ok"] = counts["candidates"] - counts["failed"]
    counts["prompt_tokens"] = int(by_model["prompt_tokens"].sum() or 0)
    counts["completion_tokens"] = int(by_model["completion_tokens"].sum() or 0)
    counts["cost_usd"] = round(
        sum(
            call_cost(price[m], p, c)
            for m, p, c in by_model.select("model", "prompt_tokens", "completion_tokens").iter_rows()
            if m in price
        ),
        6,
    )
    return counts


def failed_rows(previous: pl.LazyFrame | pl.DataFrame | None) -> dict:
    """candidate_id -> an earlier failed row: kept as recorded unless --retry-failed (asking again costs money)."""
    if previous is None:
        return {}
    failed = previous.lazy().filter(pl.col("error").is_not_null()).collect()
    return {row["candidate_id"]: row for row in failed.iter_rows(named=True)}


def generate_with_counts(
    prompts: pl.DataFrame,
    generators: list[GeneratorSpec],
    cache: CallCache,
    retry_failed: bool = False,
    previous: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, dict]:
    """The candidates table and the counts for the manifest (calls made, cached, tokens, cost)."""
    df, counts = generate_part(prompts, generators, cache, {} if retry_failed else failed_rows(previous))
    return df, {**table_counts(df.lazy(), generators), **counts}


def generate(
    prompts: pl.DataFrame,
    generators: list[GeneratorSpec],
    cache: CallCache,
    retry_failed: bool = False,
    previous: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Candidates for the prompts (a prompts-table frame) from each generator; see the module docstring."""
    return generate_with_counts(prompts, generators, cache, retry_failed, previous)[0]


def step(config: Config, run: Run, retry_failed: bool = False) -> dict:
    """Generate part by part (cache first), writing each part as it is done; then the parts become the candidates
    table."""
    section = config.require(
        "generate", hint="add `generate: {generators: [{backend: transformers, model: embedded:smollm2}]}`"
    )
    generators = section.generators
    n_prompts = (
        active_prompts(run.scan("prompts")).select(pl.len()).collect().item()
    )  # duplicates and sampled-out prompts are not generated for
    size = part_size(section.part_size, generators, run.height("prompts"))  # parts are slices of the whole table
    for spec in generators:
        check_spec(spec)
    kept = {} if retry_failed or not run.has("candidates") else failed_rows(run.scan("candidates"))
    settings = [g.model_dump(mode="json") for g in generators]
    parts = TableParts(run, "candidates")
    per_prompt = sum(len(g.temperatures) * g.n for g in generators)  # candidates of one prompt
    counts = {"calls": 0, "cached": 0, "failed_kept": 0, "parts_resumed": 0}
    keys = []
    cache = run_cache(run.path)
    try:
        with ticker(f"generate {', '.join(g.label for g in generators)}", per_prompt * n_prompts, 0) as tick:
            for index, chunk in enumerate(run.parts("prompts", size, where=active_prompts)):
                keys.append(
                    content_id("candidates", chunk["prompt_id"].to_list(), settings, retry_failed, sorted(kept))[:12]
                )
                if parts.has(index, keys[-1]):  # written before a crash: its calls are done
                    counts["parts_resumed"] += 1
                    tick(per_prompt * chunk.height, cached=True)
                    continue
                df, made = generate_part(chunk, generators, cache, kept, tick)
                parts.write(index, keys[-1], df)
                counts = {k: counts[k] + made.get(k, 0) for k in counts}
    finally:
        cache.close()
    parts.assemble(keys)
    candidates = run.scan("candidates")
    counts = {**table_counts(candidates, generators), **counts}
    errors = (
        candidates.filter(pl.col("error").is_not_null())
        .group_by("error")
        .len()
        .sort("len", descending=True)
        .head(3)
        .collect()
    )
    summary("generate", {**counts, **{f"error: {e[:60]}": n for e, n in errors.iter_rows()}})
    if counts["failed"] and not counts["ok"]:
        raise run.every_call_failed(
            "generate",
            "candidates",
            "calls",
            f"most often: {errors.row(0)[0]}",
            f"prefab generate --run {run.path} --retry-failed",
            **counts,
        )
    if counts["failed"]:
        console.print(
            f"[yellow]{counts['failed']} failed call(s) recorded with their error; "
            f"`prefab generate --run {run.path} --retry-failed` calls them again[/yellow]"
        )
    return counts


def local_checkpoints(config: Config) -> dict[str, str]:
    """The fingerprints of the local checkpoints the generators name (a retrained one makes the stage stale)."""
    return local_fingerprints([g.model for g in config.generate.generators] if config.generate else [])


STAGE = Stage(
    name="generate", order=30, step=step, section="generate", settings=GenerateConfig, inputs=local_checkpoints
)
