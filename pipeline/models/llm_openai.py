"""The openai backend: any OpenAI-compatible server (OpenAI, vLLM, TGI, Ollama, llama.cpp server, any base_url)
through `openai.AsyncOpenAI`.

A call whose first attempt fails enters one retry loop (tenacity), which bounds all its attempts by
1 + max_retries, whatever failed: 408/409/429/5xx (honouring Retry-After), timeouts, connection errors, and 200s
that are not a chat completion (HTML, JSON of another shape, no choices); exponential backoff otherwise.
`concurrency` requests are in flight across all base_urls, which take turns (round robin); rpm/tpm limits
(aiolimiter) pace first attempts, not retries.
A rejected key or a model the server does not have stops every call: ModelError.

`mode: batch` sends the requests to the provider's Batch API instead, which answers within `batch_window`
(hours) at a lower price.

Requests become lines of the batch JSONL format that OpenAI's Batch API and vLLM's `run-batch` share
(`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`; custom_id is a hash of the body),
uploaded (`files.create`, purpose batch) in files of at most `batch_max_requests` lines and 190 MB, each
submitted as one batch, polled every `batch_poll_s` seconds and collected line by line from its output and
error files. Each batch is recorded in the run's cache.sqlite (CallCache.add_batch) as soon as the server
accepts it, so a killed run, started again, waits for the same batches instead of paying again; a recorded
batch the server no longer knows (404) is forgotten and its requests are submitted anew.

Per request: a 200 line is a Result like a realtime answer (without latency); an error line or a non-200
response is a Result with its reason, as is a request that an expired or cancelled batch never reached and
every request of a failed batch (validation errors). Failures are not cached, so a later run asks again.
A rejected key, a model the server does not have and a server without the Batch API raise ModelError.
"""

import asyncio
import concurrent.futures
import json
import os
import random
import time
from collections import Counter
from contextlib import contextmanager
from typing import Final

from pipeline.core.cache import request_key
from pipeline.core.errors import ConfigError, ModelError
from pipeline.core.progress import console, progress_bar
from pipeline.models.backends import DEFAULT_MAX_TOKENS, Request, Result, estimate_prompt_tokens


class OpenAIBackend:
    """The backend (pipeline/models/backends.py): `backend: openai` in a model's config."""

    fields = frozenset(
        {
            "base_url",
            "api_key_env",
            "concurrency",
            "rpm",
            "tpm",
            "timeout",
            "max_retries",
            "mode",
            "batch_poll_s",
            "batch_window",
            "batch_max_requests",
        }
    )
    json_schema = True
    top_logprobs = 20  # the most OpenAI-compatible servers return
    journal = True  # batch mode records its batch ids in the run (CallCache.add_batch)

    def check(self, spec) -> None:
        api_key(spec)
        if spec.mode == "batch" and len(spec.base_urls) > 1:
            raise ConfigError(
                f"model {spec.label!r} has mode: batch and {len(spec.base_urls)} base_urls; a batch goes to one server",
                hint="give one `base_url`, or use `mode: realtime` to spread calls over several",
            )

    def run(self, spec, requests: list[Request], finish, journal=None) -> None:
        if spec.mode == "batch":
            run_batches(spec, requests, finish, journal)
        else:
            _run_async(_call_all(spec, requests, finish))


def api_key(spec) -> str:
    """The key from the variable the spec names (a config holds only its name), or OPENAI_API_KEY."""
    if not spec.api_key_env:
        return os.environ.get("OPENAI_API_KEY", "not-needed")
    value = os.environ.get(spec.api_key_env)
    if not value:
        raise ConfigError(
            f"environment variable {spec.api_key_env} is not set (api_key_env of model {spec.label!r})",
            hint=f"export {spec.api_key_env}=... before running",
        )
    return value


def _run_async(coro):
    """asyncio.run, also when the caller already runs an event loop (notebooks, async judges)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _limiter(per_minute: float | None, largest: float = 1.0):
    """A leaky bucket holding about one second of budget (at least one request), so a limit paces from the start."""
    if not per_minute:
        return None
    from aiolimiter import AsyncLimiter

    capacity = max(per_minute / 60, largest, 1.0)
    return AsyncLimiter(capacity, capacity * 60 / per_minute)


def _estimate_tokens(request: Request) -> int:
    return estimate_prompt_tokens(request.messages) + (request.max_tokens or DEFAULT_MAX_TOKENS)


async def _call_all(spec, requests: list[Request], finish) -> None:
    import httpx2
    import openai

    key = api_key(spec)
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
    import openai
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

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
        return _result(response, _first_choice(response), request, time.perf_counter() - started)

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
            f"{client.base_url} refused model {spec.model!r}: HTTP {e.status_code}: {_message(e)}",
            hint="check the model name, base_url and the API key variable (api_key_env)",
        ) from e
    except openai.APITimeoutError:
        return failed(f"timed out after {spec.timeout}s")
    except openai.APIStatusError as e:
        return failed(f"HTTP {e.status_code}: {_message(e)}")
    except openai.APIConnectionError as e:
        cause = e.__cause__ or e
        return failed(f"connection error: {type(cause).__name__}: {cause}")
    except (_Malformed, json.JSONDecodeError, openai.APIResponseValidationError) as e:
        return failed(
            f"malformed answer: {e}" if isinstance(e, _Malformed) else f"malformed answer: {type(e).__name__}: {e}"
        )
    except Exception as e:  # one bad call must not stop the others; its reason is kept
        return failed(f"{type(e).__name__}: {e}")


def _result(response: dict, choice: dict, request: Request, latency: float | None) -> Result:
    """The Result of a chat completion's JSON (realtime, or one line of a batch's output, where latency is unknown)."""
    usage = response.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens, completion_tokens = (
        v if isinstance(v := usage.get(k), int) else None for k in ("prompt_tokens", "completion_tokens")
    )
    finish_reason = choice.get("finish_reason")
    message = choice["message"]
    content = message.get("content")
    if not isinstance(content, str):  # a refusal or a tool call: an answer, not a fault; asking again gives the same
        refusal = message.get("refusal")
        return Result(
            error=f"refused: {refusal}" if refusal else "response has no text",
            finish_reason=finish_reason,
            latency_s=latency,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
    logprobs = _logprobs(choice) if request.logprobs else None
    return Result(
        content,
        finish_reason=finish_reason,
        latency_s=None if latency is None else round(latency, 4),
        logprobs=logprobs,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _logprobs(choice: dict) -> list[dict]:
    """[{token, logprob, top_logprobs: [{token, logprob}]}] of the answer's tokens; _Malformed when they are another
    shape."""
    try:
        return [
            {
                "token": t["token"],
                "logprob": t["logprob"],
                "top_logprobs": [{"token": a["token"], "logprob": a["logprob"]} for a in (t.get("top_logprobs") or [])],
            }
            for t in ((choice.get("logprobs") or {}).get("content") or [])
        ]
    except (AttributeError, KeyError, TypeError) as e:
        raise _Malformed(
            f"HTTP 200 whose logprobs are not a list of tokens: {_snippet(_dump(choice.get('logprobs')))}"
        ) from e


class _Malformed(Exception):
    """A 200 answer that is not a chat completion: a proxy's error page, a misrouted base_url, JSON of another
    shape, no choices. Retried like a 500, then recorded with what came instead."""


def _first_choice(response):
    """The first choice of a conforming chat completion, or _Malformed saying what came instead."""
    if isinstance(response, str):  # the SDK hands back the body as text when it is not JSON
        raise _Malformed(f"HTTP 200 with a body that is not JSON: {_snippet(response)!r}")
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list):
        raise _Malformed(f"HTTP 200 with JSON that is not a chat completion: {_snippet(_dump(response))}")
    if not choices:
        raise _Malformed("HTTP 200 with no choices")
    if not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        raise _Malformed(f"HTTP 200 whose first choice has no message: {_snippet(_dump(response))}")
    return choices[0]


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _snippet(text: str, width: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width] + "…"


MAX_RETRY_AFTER_S = 120  # a server asking for a longer pause is not retried (the SDK's rule too)
BACKOFF_S = (0.5, 8.0)  # first and longest pause between attempts when the server names none (the SDK's figures)


def _retryable(error: BaseException) -> bool:
    """What is worth asking again: timeouts, dropped connections, 408/409/429/5xx, and 200s that are not completions."""
    import openai

    if isinstance(
        error, (_Malformed, json.JSONDecodeError, openai.APIResponseValidationError, openai.APIConnectionError)
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
            from email.utils import parsedate_to_datetime

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


def _message(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(error, "message", error))


# mode: batch

ENDPOINT: Final = "/v1/chat/completions"
MAX_FILE_BYTES = 190 * 1024 * 1024  # OpenAI takes batch files up to 200 MB
FINAL = ("completed", "failed", "expired", "cancelled")
NOT_REACHED = {
    "expired": "batch expired before this request ran",
    "cancelled": "batch was cancelled before this request ran",
}


def run_batches(spec, requests: list[Request], finish, journal=None) -> None:
    """Answer requests through batches (resuming those `journal` holds for this server), calling finish(i, result) per
    request."""
    import openai

    client = openai.OpenAI(
        base_url=spec.base_urls[0] if spec.base_urls else None,
        api_key=api_key(spec),
        max_retries=spec.max_retries,
        timeout=spec.timeout,
    )
    server = str(client.base_url)
    bodies = [{"model": spec.model, **r.payload()} for r in requests]
    index = {request_key(body): j for j, body in enumerate(bodies)}  # custom_id -> request
    waiting: dict[str, list[str]] = {}  # batch id -> the custom_ids of ours it holds
    with client, _stops(server, spec):
        left = dict.fromkeys(index)  # custom_ids in no batch yet, in request order
        for batch_id, ids in journal.open_batches(server) if journal is not None else []:
            mine = [i for i in ids if i in left]
            if not mine:
                continue
            try:
                client.batches.retrieve(batch_id)
            except openai.NotFoundError:  # deleted, or another server at this URL: ask again
                journal.close_batch(batch_id, "missing")
                continue
            waiting[batch_id] = mine
            for i in mine:
                del left[i]
        if waiting:
            console.print(
                f"{spec.label}: waiting for {len(waiting)} batch(es) an earlier run submitted "
                f"({sum(map(len, waiting.values()))} requests)"
            )
        for chunk in _files(((i, bodies[index[i]]) for i in left), spec.batch_max_requests):
            data = b"".join(line for _, line in chunk)
            uploaded = client.files.create(file=("prefab-batch.jsonl", data), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window=spec.batch_window
            )
            if journal is not None:
                journal.add_batch(batch.id, server, [i for i, _ in chunk])
            waiting[batch.id] = [i for i, _ in chunk]
            console.print(
                f"{spec.label}: submitted batch {batch.id} ({len(chunk)} requests); "
                "a stopped run, started again, collects it"
            )
        _collect_all(client, spec, waiting, requests, index, finish, journal)


def _files(lines, most: int):
    """The batch JSONL lines, in files of at most `most` lines and MAX_FILE_BYTES: [(custom_id, line bytes)]."""
    chunk: list[tuple[str, bytes]] = []
    size = 0
    for custom_id, body in lines:
        line = (
            json.dumps(
                {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False
            ).encode()
            + b"\n"
        )
        if chunk and (len(chunk) >= most or size + len(line) > MAX_FILE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((custom_id, line))
        size += len(line)
    if chunk:
        yield chunk


def _collect_all(client, spec, waiting: dict, requests, index: dict, finish, journal) -> None:
    """Poll every batch until it ends, then finish each of its requests; a progress bar shows the server's counts."""
    done: set[int] = set()
    total = sum(map(len, waiting.values()))
    running: dict[str, int] = {}  # batch id -> requests the server says it has finished (completed or failed)
    shown = failed = 0
    with progress_bar(f"batch {spec.label}", total) as advance:
        while waiting:
            statuses: Counter[str] = Counter()
            failing = 0  # failed so far in batches still running
            for batch_id in list(waiting):
                batch = client.batches.retrieve(batch_id)
                statuses[batch.status] += 1
                counts = batch.request_counts
                if batch.status not in FINAL:
                    running[batch_id] = (
                        min(len(waiting[batch_id]), (counts.completed or 0) + (counts.failed or 0)) if counts else 0
                    )
                    failing += (counts.failed or 0) if counts else 0
                    continue
                failed += _collect(client, batch, waiting.pop(batch_id), requests, index, done, finish)
                running.pop(batch_id, None)
                if journal is not None:
                    journal.close_batch(batch_id, batch.status)
                _stop_if_no_model(batch, spec, str(client.base_url))
            now = len(done) + sum(running.values())
            note = "batches: " + ", ".join(f"{n} {status}" for status, n in statuses.items())
            advance(
                now - shown, note=f"({note}; {failed + failing} requests failed)" if failed + failing else f"({note})"
            )
            shown = now
            if waiting:
                time.sleep(spec.batch_poll_s)


def _collect(client, batch, ids: list[str], requests, index: dict, done: set, finish) -> int:
    """Finish every request of an ended batch: from its output and error files, or with why it has no answer.
    Returns how many failed."""
    failed = 0
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        with client.files.with_streaming_response.content(file_id) as response:
            for line in response.iter_lines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a blank or broken line names no request; its request ends below as unanswered
                j = index.get(record.get("custom_id")) if isinstance(record, dict) else None
                if j is not None and j not in done:
                    done.add(j)
                    result = _line_result(record, requests[j])
                    failed += result.error is not None
                    finish(j, result)
    reason = _why_unanswered(batch)
    for custom_id in ids:
        j = index[custom_id]
        if j not in done:
            done.add(j)
            failed += 1
            finish(j, Result(error=reason))
    return failed


def _line_result(record: dict, request: Request) -> Result:
    """One line of an output or error file: {"custom_id", "response": {"status_code", "body"}, "error"}."""
    error = record.get("error")
    if isinstance(error, dict) and error:
        if error.get("code") in (
            "batch_expired",
            "batch_cancelled",
        ):  # OpenAI lists what it never ran in the error file
            return Result(error=NOT_REACHED[error["code"].removeprefix("batch_")])
        return Result(error=f"batch error {error.get('code')}: {error.get('message')}")
    response = record.get("response") or {}
    status, body = response.get("status_code"), response.get("body")
    if status != 200:
        message = (
            body.get("error", {}).get("message")
            if isinstance(body, dict) and isinstance(body.get("error"), dict)
            else None
        )
        return Result(error=f"HTTP {status}: {message or _snippet(json.dumps(body))}")
    if not isinstance(body, dict):
        return Result(
            error=f"malformed answer: a 200 line whose body is not a chat completion: {_snippet(json.dumps(body))}"
        )
    try:
        return _result(body, _first_choice(body), request, None)
    except _Malformed as e:
        return Result(error=f"malformed answer: {e}")


def _why_unanswered(batch) -> str:
    if batch.status in NOT_REACHED:
        return NOT_REACHED[batch.status]
    if batch.status == "failed":
        return f"batch {batch.id} failed: {_errors(batch) or 'no reason given'}"
    return f"batch {batch.id} ended {batch.status} without an answer to this request"


def _errors(batch, most: int = 3) -> str:
    errors = list(getattr(batch.errors, "data", None) or [])
    text = "; ".join(
        f"line {e.line}: {e.code}: {e.message}" if e.line is not None else f"{e.code}: {e.message}"
        for e in errors[:most]
    )
    return text + (f"; and {len(errors) - most} more" if len(errors) > most else "")


def _stop_if_no_model(batch, spec, server: str) -> None:
    """A batch refused for its model fails every request the same way: stop, as the realtime backend does."""
    errors = getattr(batch.errors, "data", None) or []
    if batch.status == "failed" and any(e.code == "model_not_found" for e in errors):
        raise ModelError(
            f"{server} refused model {spec.model!r}: batch {batch.id} failed: {_errors(batch)}",
            hint="check the model name, base_url and the API key variable (api_key_env)",
        )


@contextmanager
def _stops(server: str, spec):
    """What stops every request becomes a ModelError saying what to do; batches already recorded stay so."""
    import openai

    try:
        yield
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise ModelError(
            f"{server} refused the key for model {spec.model!r}: HTTP {e.status_code}: {_message(e)}",
            hint="check base_url and the API key variable (api_key_env)",
        ) from e
    except openai.NotFoundError as e:
        raise ModelError(
            f"{server} has no Batch API here: {e.request.method} {e.request.url.path} answered HTTP 404: {_message(e)}",
            hint="use `mode: realtime` with this server (vLLM runs batch files offline, with `vllm run-batch`), "
            "or point base_url at a provider with /v1/files and /v1/batches",
        ) from e
    except (openai.APIStatusError, openai.APIConnectionError) as e:
        raise ModelError(
            f"the Batch API at {server} failed: {type(e).__name__}: {_message(e)}",
            hint="run the same command again: the batches already submitted are recorded in the run and are "
            "collected, not paid for again",
        ) from e


backend = OpenAIBackend()  # registered under the prefab.backends entry point (pyproject.toml)
