"""Batch mode of the openai backend (`mode: batch`): the requests go to the provider's Batch API, which answers
within `batch_window` (hours) at a lower price.

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

import json
import time
from collections import Counter
from contextlib import contextmanager
from typing import Final

from pipeline.core.cache import request_key
from pipeline.core.errors import ModelError
from pipeline.core.progress import console, progress_bar
from pipeline.models.backends import Request, Result
from pipeline.models.openai_api.responses import Malformed, completion_result, error_message, first_choice, snippet

ENDPOINT: Final = "/v1/chat/completions"
MAX_FILE_BYTES = 190 * 1024 * 1024  # OpenAI takes batch files up to 200 MB
FINAL = ("completed", "failed", "expired", "cancelled")
NOT_REACHED = {
    "expired": "batch expired before this request ran",
    "cancelled": "batch was cancelled before this request ran",
}


def run_batches(spec, key: str, requests: list[Request], finish, journal=None) -> None:
    """Answer requests through batches (resuming those `journal` holds for this server), calling finish(i, result) per
    request."""
    import openai  # start-up: openai

    client = openai.OpenAI(
        base_url=spec.base_urls[0] if spec.base_urls else None,
        api_key=key,
        max_retries=spec.max_retries,
        timeout=spec.timeout,
    )
    server = str(client.base_url)
    bodies = [{"model": spec.model, **r.payload()} for r in requests]
    index = {request_key(body): j for j, body in enumerate(bodies)}  # custom_id -> request
    waiting: dict[str, list[str]] = {}  # batch id -> the custom_ids of ours it holds
    with client, stops(server, spec):
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
        return Result(error=f"HTTP {status}: {message or snippet(json.dumps(body))}")
    if not isinstance(body, dict):
        return Result(
            error=f"malformed answer: a 200 line whose body is not a chat completion: {snippet(json.dumps(body))}"
        )
    try:
        return completion_result(body, first_choice(body), request, None)
    except Malformed as e:
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
def stops(server: str, spec):
    """What stops every request becomes a ModelError saying what to do; batches already recorded stay so."""
    import openai  # start-up: openai

    try:
        yield
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise ModelError(
            f"{server} refused the key for model {spec.model!r}: HTTP {e.status_code}: {error_message(e)}",
            hint="check base_url and the API key variable (api_key_env)",
        ) from e
    except openai.NotFoundError as e:
        raise ModelError(
            f"{server} has no Batch API here: {e.request.method} {e.request.url.path} answered HTTP 404: "
            f"{error_message(e)}",
            hint="use `mode: realtime` with this server (vLLM runs batch files offline, with `vllm run-batch`), "
            "or point base_url at a provider with /v1/files and /v1/batches",
        ) from e
    except (openai.APIStatusError, openai.APIConnectionError) as e:
        raise ModelError(
            f"the Batch API at {server} failed: {type(e).__name__}: {error_message(e)}",
            hint="run the same command again: the batches already submitted are recorded in the run and are "
            "collected, not paid for again",
        ) from e
