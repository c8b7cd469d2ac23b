"""The one interface to LLMs, for generators and judges alike: `call_llm(spec, requests, cache, description)`.

Requests and results are typed (pipeline/models/backends.py): a `Request` holds the fields that change an answer
(messages, temperature, top_p, max_tokens, seed, stop, response_format, logprobs, top_logprobs); a `Result`
holds text, finish_reason, prompt_tokens, completion_tokens, latency_s, logprobs when asked, error (None on
success) and whether it came from the cache. Results come back in request order.

Every request is first looked up in the run's call cache, keyed by the request, the backend and the model
(not the base_url: several servers of one model share answers), and for a local checkpoint by its files
(pipeline/models/checkpoints.py: a checkpoint retrained in place is asked again). Only misses go to the backend that
`spec.backend` names (pipeline.core.registry: openai, transformers, or one another package or a test
registered), and each success is committed to the cache the moment the backend reports it finished, so a
killed run repays only the calls in flight at the kill. One bad call never raises: it comes back with its
error text (failures are not cached, so they are tried again later). Only what stops every call (no API
key, a model that does not exist, a rejected key) raises ModelError/ConfigError.

Under `spending_limit(budget_usd)` (the runner sets the config's budget_usd) calls go out in slices, and a
slice that could take the run's spend (what its cache's calls cost) past the budget is not sent:
BudgetError, with every finished call kept.
"""

import time
from contextlib import contextmanager
from typing import cast

from pipeline.core.cache import CallCache, request_key, spending_allowed
from pipeline.core.config import ModelSpec
from pipeline.core.errors import BudgetError, ModelError
from pipeline.core.progress import progress_bar
from pipeline.core.registry import backend
from pipeline.models.backends import DEFAULT_MAX_TOKENS, Request, Result, most_prompt_tokens
from pipeline.models.checkpoints import identity


def cache_keys(spec: ModelSpec, requests: list[Request]) -> list[str]:
    """Each request's key in a call cache: the model and the request, and a local checkpoint's fingerprint (its files
    looked at once), absent from the keys of other models."""
    checkpoint = identity(spec.model)
    model = {"backend": spec.backend, "model": spec.model, **({"checkpoint": checkpoint} if checkpoint else {})}
    return [request_key({**model, **r.payload()}) for r in requests]


def cache_key(spec: ModelSpec, request: Request) -> str:
    return cache_keys(spec, [request])[0]


def call_cost(spec: ModelSpec, prompt_tokens: float | None, completion_tokens: float | None) -> float:
    """Dollars for the tokens (a plan passes expected counts: fractions of a token)."""
    return ((prompt_tokens or 0) * spec.price_per_mtok_in + (completion_tokens or 0) * spec.price_per_mtok_out) / 1e6


def most_cost(spec: ModelSpec, request: Request) -> float:
    """The most a call can cost before it is made: every prompt byte a token, every allowed output token used."""
    return call_cost(spec, most_prompt_tokens(request.messages), request.max_tokens or DEFAULT_MAX_TOKENS)


def part_size(size: int, specs, total: int) -> int:
    """Rows per part of a stage that streams: its setting; or all rows at once when a model answers through provider
    batches, since each part waits for its batches to end (hours): they must be submitted together."""
    return max(total, 1) if any(getattr(s, "mode", None) == "batch" for s in specs) else size


def check_spec(spec: ModelSpec) -> None:
    """Fail before any work (and before the run's cache is touched): an unknown backend, a missing key or model path."""
    backend(spec.backend).check(spec)


def call_llm(spec: ModelSpec, requests: list[Request], cache: CallCache, description: str, tick=None) -> list[Result]:
    """Answer every request (cache first, then the spec's backend); results come back in request order. A stage that
    calls in parts passes its own progress `tick` (from ticker()) to show one bar for all of them."""
    keys = cache_keys(spec, requests)
    hits = cache.get_many(list(dict.fromkeys(keys)))
    results: list[Result | None] = [None] * len(requests)
    todo: dict[str, list[int]] = {}  # key -> indices; identical requests are called once
    for i, key in enumerate(keys):
        if key in hits:
            results[i] = Result.from_cache(hits[key])
        else:
            todo.setdefault(key, []).append(i)
    done = len(requests) - sum(len(v) for v in todo.values())
    if not todo:
        if tick and done:
            tick(done, cached=True)
        return cast(list[Result], results)  # every request was a cache hit
    chosen = backend(spec.backend)  # an unknown name fails here, before the progress bar
    work = [(key, requests[idx[0]]) for key, idx in todo.items()]
    with own_ticker(description, len(requests), done, tick) as tick:
        for start, stop in _slices(spec, work, cache):

            def finish(j: int, result: Result, start=start) -> None:
                key, request = work[start + j]
                if result.error is None:
                    _save(
                        cache,
                        key,
                        request.payload(),
                        result.cache_row(),
                        spec.backend,
                        call_cost(spec, result.prompt_tokens, result.completion_tokens),
                    )
                for i in todo[key]:
                    results[i] = result
                tick(len(todo[key]))

            batch = [r for _, r in work[start:stop]]
            if getattr(chosen, "journal", False):  # it records submitted work in the run (pipeline/models/backends.py)
                chosen.run(spec, batch, finish, journal=cache)
            else:
                chosen.run(spec, batch, finish)
    return cast(list[Result], results)  # a backend calls finish for each of its requests (backends.Backend.run)


def _slices(spec: ModelSpec, work: list[tuple[str, Request]], cache: CallCache):
    """(start, stop) of the work to send next: all of it without a budget (or for a free model); else slices of a
    few rounds of concurrency, each sent only if its most possible cost still fits in what is left of the budget."""
    budget = spending_allowed()
    if budget is None or not (spec.price_per_mtok_in or spec.price_per_mtok_out):
        yield 0, len(work)
        return
    # a batch job waits hours for its slowest request: send all that fits as one; realtime, a few rounds of concurrency
    size = len(work) if getattr(spec, "mode", None) == "batch" else max(1, 4 * getattr(spec, "concurrency", 1))
    start = 0
    while start < len(work):
        left = budget - cache.spent_usd()
        stop = start
        while stop < min(len(work), start + size) and (left := left - most_cost(spec, work[stop][1])) >= 0:
            stop += 1
        if stop == start:
            raise BudgetError(
                f"budget_usd {budget:g} reached: this run's calls cost ${cache.spent_usd():.4f} so far, and the "
                f"next call ({spec.label}) could cost up to ${most_cost(spec, work[start][1]):.4f}; "
                f"{len(work) - start} call(s) not made",
                hint="every finished call is kept in the run's cache; raise budget_usd in the config "
                "(`prefab plan CONFIG` estimates what the rest costs) and run the same command again",
            )
        yield start, stop
        start = stop


def _save(cache: CallCache, key: str, request: dict, response: dict, kind: str, cost_usd: float = 0.0) -> None:
    """Commit a finished call before anything else happens: a kill -9 then repays only calls still in flight.

    One small WAL commit (no fsync at synchronous=NORMAL) costs tens of microseconds, against milliseconds of
    client work per call (bench/bench_generate.py measures the whole)."""
    try:
        cache.put(key, request, response, kind, cost_usd)
    except Exception as e:
        raise ModelError(
            f"could not write the call cache {cache.path}: {e}",
            hint="check free disk space and permissions of the run directory",
        ) from e


@contextmanager
def own_ticker(description: str, total: int, done: int, given=None):
    """The caller's tick (advanced by what the cache answered), or a bar of this call's own."""
    if given is not None:
        if done:
            given(done, cached=True)
        yield given
        return
    with ticker(description, total, done) as tick:
        yield tick


@contextmanager
def ticker(description: str, total: int, done: int = 0):
    """A progress bar updated at most ~10 times a second: at 1,000+ calls/s per-call updates would cost more than the
    calls. tick(n, cached=True) counts work answered without being done here (the cache, an earlier run's parts):
    shown as done, left out of the rate."""
    with progress_bar(description, total) as advance:
        if done:
            advance(done, cached=True)
        pending = [0, time.monotonic()]

        def tick(n: int = 1, cached: bool = False) -> None:
            if cached:
                advance(n, cached=True)
                return
            pending[0] += n
            now = time.monotonic()
            if now - pending[1] >= 0.1:
                advance(pending[0])
                pending[0], pending[1] = 0, now

        try:
            yield tick
        finally:
            if pending[0]:
                advance(pending[0])
