"""The one interface to LLMs, for generators and judges alike: `call_llm(spec, requests, cache, description)`.

Requests and results are typed (pipeline/backends.py): a `Request` holds the fields that change an answer
(messages, temperature, top_p, max_tokens, seed, stop, response_format, logprobs, top_logprobs); a `Result`
holds text, finish_reason, prompt_tokens, completion_tokens, latency_s, logprobs when asked, error (None on
success) and whether it came from the cache. Results come back in request order.

Every request is first looked up in the run's call cache, keyed by the request, the backend and the model
(not the base_url: several servers of one model share answers). Only misses go to the backend that
`spec.backend` names (pipeline.registry: openai, transformers, or one another package or a test
registered), and each success is committed to the cache the moment the backend reports it finished, so a
killed run repays only the calls in flight at the kill. One bad call never raises: it comes back with its
error text (failures are not cached, so they are tried again later). Only what stops every call (no API
key, a model that does not exist, a rejected key) raises ModelError/ConfigError.
"""

import time
from contextlib import contextmanager

from pipeline.backends import Request, Result
from pipeline.cache import CallCache, request_key
from pipeline.config import ModelSpec
from pipeline.errors import ModelError
from pipeline.progress import progress_bar
from pipeline.registry import backend


def cache_key(spec: ModelSpec, request: Request) -> str:
    return request_key({"backend": spec.backend, "model": spec.model, **request.payload()})


def check_spec(spec: ModelSpec) -> None:
    """Fail before any work (and before the run's cache is touched): an unknown backend, a missing key or model path."""
    backend(spec.backend).check(spec)


def call_llm(spec: ModelSpec, requests: list[Request], cache: CallCache, description: str) -> list[Result]:
    """Answer every request (cache first, then the spec's backend); results come back in request order."""
    keys = [cache_key(spec, r) for r in requests]
    hits = cache.get_many(list(dict.fromkeys(keys)))
    results: list[Result | None] = [None] * len(requests)
    todo: dict[str, list[int]] = {}  # key -> indices; identical requests are called once
    for i, key in enumerate(keys):
        if key in hits:
            results[i] = Result.from_cache(hits[key])
        else:
            todo.setdefault(key, []).append(i)
    if not todo:
        return results
    chosen = backend(spec.backend)  # an unknown name fails here, before the progress bar
    work = [(key, requests[idx[0]]) for key, idx in todo.items()]
    with _ticker(description, len(requests), done=len(requests) - sum(len(v) for v in todo.values())) as tick:
        def finish(j: int, result: Result) -> None:
            key, request = work[j]
            if result.error is None:
                _save(cache, key, request.payload(), result.cache_row(), spec.backend)
            for i in todo[key]:
                results[i] = result
            tick(len(todo[key]))

        if getattr(chosen, "journal", False):  # it records submitted work in the run (pipeline/backends.py)
            chosen.run(spec, [r for _, r in work], finish, journal=cache)
        else:
            chosen.run(spec, [r for _, r in work], finish)
    return results


def _save(cache: CallCache, key: str, request: dict, response: dict, kind: str) -> None:
    """Commit a finished call before anything else happens: a kill -9 then repays only calls still in flight.

    One small WAL commit (no fsync at synchronous=NORMAL) costs tens of microseconds, against milliseconds of
    client work per call (bench/bench_generate.py measures the whole)."""
    try:
        cache.put(key, request, response, kind)
    except Exception as e:
        raise ModelError(f"could not write the call cache {cache.path}: {e}",
                         hint="check free disk space and permissions of the run directory") from e


@contextmanager
def _ticker(description: str, total: int, done: int):
    """A progress bar updated at most ~10 times a second: at 1,000+ calls/s per-call updates would cost more than the calls."""
    with progress_bar(description, total) as advance:
        if done:
            advance(done)
        pending = [0, time.monotonic()]

        def tick(n: int = 1) -> None:
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
