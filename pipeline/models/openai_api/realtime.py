"""Realtime calls of the openai backend: concurrent chat completions through `openai.AsyncOpenAI`, with retries and
rate limits.

A call whose first attempt fails enters one retry loop (tenacity), which bounds all its attempts by
1 + max_retries, whatever failed: 408/409/429/5xx (honouring Retry-After), timeouts, connection errors, and 200s
that are not a chat completion (HTML, JSON of another shape, no choices); exponential backoff otherwise.
`concurrency` requests are in flight across all base_urls, which take turns (round robin); rpm/tpm limits
(aiolimiter) pace first attempts, not retries.
A rejected key or a model the server does not have stops every call: ModelError.
"""

import asyncio
import json
import random
import time
from email.utils import parsedate_to_datetime

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from pipeline.core.errors import ModelError
from pipeline.models.backends import DEFAULT_MAX_TOKENS, Request, Result, estimate_prompt_tokens
from pipeline.models.openai_api.responses import Malformed, completion_result, error_message, first_choice

MAX_RETRY_AFTER_S = 120  # a server asking for a longer pause is not retried (the SDK's rule too)
BACKOFF_S = (0.5, 8.0)  # first and longest pause between attempts when the server names none (the SDK's figures)


def _limiter(per_minute: float | None, largest: float = 1.0):
    """A leaky bucket holding about one second of budget (at least one request), so a limit paces from the start."""
    if not per_minute:
        return None
    capacity = max(per_minute / 60, largest, 1.0)
    return AsyncLimiter(capacity, capacity * 60 / per_minute)


def _estimate_tokens(request: Request) -> int:
    return estimate_prompt_tokens(request.messages) + (request.max_tokens or DEFAULT_MAX_TOKENS)


async def call_all(spec, key: str, requests: list[Request], finish) -> None:
    """Answer requests with `key`, `concurrency` at a time, calling finish(i, result) as each ends."""
    import httpx2  # start-up: httpx2
    import openai  # start-up: openai

    limits = httpx2.Limits(max_connections=spec.concurrency + 8, max_keepalive_connections=spec.concurrency + 8)
    clients = [
        openai.AsyncOpenAI(
            base_url=url,
            api_key=key,
            max_retries=0,
            timeout=spec.timeout,  # _one retries
            http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=spec.timeout),
        )
        for url in (spec.base_urls or [None])
    ]
    estimates = [_estimate_tokens(r) for r in requests] if spec.tpm else None
    rpm = _limiter(spec.rpm)
    tpm = _limiter(spec.tpm, max(estimates) if estimates else 1.0)
    fatal: list[BaseException] = []
    order = iter(range(len(requests)))

    async def worker() -> None:
        for j in order:  # workers share one iterator: each request is taken once, in order
            if fatal:
                return
            if rpm:
                await rpm.acquire()
            if tpm:
                assert estimates is not None  # both are set by spec.tpm
                await tpm.acquire(estimates[j])
            try:
                result = await _one(clients[j % len(clients)], spec, requests[j])
            except ModelError as e:
                fatal.append(e)
                return
            finish(j, result)

    try:
        await asyncio.gather(*(worker() for _ in range(min(spec.concurrency, len(requests)))))
    finally:
        for client in clients:
            await client.close()
    if fatal:
        raise fatal[0]


async def _one(client, spec, request: Request) -> Result:
    """One call: at most 1 + max_retries requests, whatever failed (status, timeout, connection, a 200 that is
    not a chat completion); then a result with the reason. The client's own retries are off (max_retries=0 on
    the client) so that one loop, here, counts every attempt."""
    import openai  # start-up: openai

    started = time.perf_counter()
    attempts = 0

    def failed(reason: str, **kw) -> Result:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return Result(error=reason + tries, latency_s=time.perf_counter() - started, **kw)

    async def ask() -> Result:
        nonlocal attempts
        attempts += 1
        # client.post (the SDK's documented call for any endpoint) with the payload as it is: create() re-walks every
        # argument through its type-driven transform and builds a pydantic object of the answer, together more
        # client CPU per call than all of prefab's own work (bench/bench_generate.py). cast_to=object gives the JSON
        # as parsed, or the body as text when it is not JSON; auth, status errors and timeouts stay the SDK's.
        response = await client.post(
            "/chat/completions", cast_to=object, body={"model": spec.model, **request.payload()}
        )
        return completion_result(response, first_choice(response), request, time.perf_counter() - started)

    try:
        # most calls succeed at once: ask without the retry loop, whose cost per call was a tenth of the throughput
        try:
            return await ask()
        except Exception as error:
            if not _retryable(error) or not spec.max_retries:
                raise
            await asyncio.sleep(_wait(error, 1))
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_attempt(spec.max_retries),
                wait=_backoff,
                reraise=True,
            ):
                with attempt:
                    return await ask()
            raise  # not reached: the retries end in an answer or (reraise=True) raise the last error
    except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
        raise ModelError(
            f"{client.base_url} refused model {spec.model!r}: HTTP {e.status_code}: {error_message(e)}",
            hint="check the model name, base_url and the API key variable (api_key_env)",
        ) from e
    except openai.APITimeoutError:
        return failed(f"timed out after {spec.timeout}s")
    except openai.APIStatusError as e:
        return failed(f"HTTP {e.status_code}: {error_message(e)}")
    except openai.APIConnectionError as e:
        cause = e.__cause__ or e
        return failed(f"connection error: {type(cause).__name__}: {cause}")
    except (Malformed, json.JSONDecodeError, openai.APIResponseValidationError) as e:
        return failed(
            f"malformed answer: {e}" if isinstance(e, Malformed) else f"malformed answer: {type(e).__name__}: {e}"
        )
    except Exception as e:  # one bad call must not stop the others; its reason is kept
        return failed(f"{type(e).__name__}: {e}")


def _retryable(error: BaseException) -> bool:
    """What is worth asking again: timeouts, dropped connections, 408/409/429/5xx, and 200s that are not completions."""
    import openai  # start-up: openai

    if isinstance(
        error, (Malformed, json.JSONDecodeError, openai.APIResponseValidationError, openai.APIConnectionError)
    ):
        return True
    if not isinstance(error, openai.APIStatusError):
        return False
    told = error.response.headers.get("x-should-retry")
    if told in ("true", "false"):
        return told == "true"
    wait = _retry_after(error)
    if wait is not None and wait > MAX_RETRY_AFTER_S:
        return False
    return error.status_code in (408, 409, 429) or error.status_code >= 500


def _retry_after(error: BaseException) -> float | None:
    """Seconds a server asked to wait (Retry-After-Ms, or Retry-After as seconds or an HTTP date), if it did."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _wait(error: BaseException, failed: int) -> float:
    """Before the next attempt, after `failed` ones: the server's Retry-After when it gave one, else 0.5 s doubling
    to 8 s, less up to 25 % jitter."""
    wait = _retry_after(error)
    if wait is not None and 0 < wait <= MAX_RETRY_AFTER_S:
        return wait
    first, longest = BACKOFF_S
    return min(first * 2 ** (failed - 1), longest) * (1 - 0.25 * random.random())


def _backoff(retry_state) -> float:
    """tenacity's wait inside the retry loop, which starts after the first attempt failed."""
    return _wait(retry_state.outcome.exception(), retry_state.attempt_number + 1)
