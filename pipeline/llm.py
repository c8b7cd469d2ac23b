"""The one interface to LLMs, for generators and judges alike: `call_llm(spec, requests, cache, description)`.

A request is a dict: {"messages", "temperature", "top_p", "max_tokens", "seed", "stop",
optional "response_format" (OpenAI json_schema dict), optional "logprobs": bool, optional "top_logprobs": int}.
A result (same order) is: {"text", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s",
"error" (None on success), "cached" (bool), and "logprobs" when asked: [{"token", "logprob", "top_logprobs"}]}.

Every request is first looked up in the run's call cache, keyed by the request, the backend and the model
(not the base_url: several servers of one model share answers). Only misses are called, and each success is
committed to the cache the moment it finishes, so a killed run repays only the calls in flight at the kill.
One bad call never raises: it comes back with its error text (failures are not cached, so they are tried
again later). Only what stops every call (no API key, a model that does not exist, a rejected key) raises
ModelError/ConfigError.

Backends:
- "openai": any OpenAI-compatible server through `openai.AsyncOpenAI`. One retry loop (tenacity) per call
  bounds all its attempts by 1 + max_retries, whatever failed: 408/409/429/5xx (honouring Retry-After),
  timeouts, connection errors, and 200s that are not a chat completion (HTML, JSON of another shape, no
  choices); exponential backoff otherwise;
  `concurrency` requests in flight across all base_urls, which take turns (round robin); rpm/tpm limits
  with aiolimiter (they pace first attempts, not retries).
- "transformers": in-process causal LM, loaded once per process, batched by prompt length with left
  padding, on GPU when present. Each row samples with its own seeded generator (Gumbel-max over the
  temperature/top-p adjusted logits), so a request's answer depends on its seed, not on its batch mates;
  temperature 0 is greedy.
"""

import asyncio
import concurrent.futures
import json
import math
import random
import time
from contextlib import contextmanager

from pipeline.cache import CallCache, request_key
from pipeline.config import ModelSpec, api_key
from pipeline.errors import ModelError
from pipeline.progress import progress_bar

REQUEST_FIELDS = ("messages", "temperature", "top_p", "max_tokens", "seed", "stop", "response_format", "logprobs", "top_logprobs")
DEFAULT_MAX_TOKENS = 512  # transformers backend and tpm estimates, when a request sets none


def normalize_request(request: dict) -> dict:
    """The fields that change an answer, without empty values: equal requests get equal cache keys."""
    unknown = set(request) - set(REQUEST_FIELDS)
    if unknown:
        raise ModelError(f"unknown request field(s) {sorted(unknown)}", hint=f"request fields are {', '.join(REQUEST_FIELDS)}")
    out = {k: request[k] for k in REQUEST_FIELDS if request.get(k) not in (None, [], "")}
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    if out.get("logprobs") is False:
        del out["logprobs"]
    return out


def cache_key(spec: ModelSpec, request: dict) -> str:
    return request_key({"backend": spec.backend, "model": spec.model, **normalize_request(request)})


def check_spec(spec: ModelSpec) -> None:
    """Fail before any work (and before the run's cache is touched) on a missing key or model path."""
    if spec.backend == "openai":
        api_key(spec)
    else:
        from pipeline.models import resolve_llm

        resolve_llm(spec.model)


def call_llm(spec: ModelSpec, requests: list[dict], cache: CallCache, description: str) -> list[dict]:
    """Answer every request (cache first); results come back in request order."""
    requests = [normalize_request(r) for r in requests]
    keys = [cache_key(spec, r) for r in requests]
    hits = cache.get_many(list(dict.fromkeys(keys)))
    results: list[dict | None] = [None] * len(requests)
    todo: dict[str, list[int]] = {}  # key -> indices; identical requests are called once
    for i, key in enumerate(keys):
        if key in hits:
            results[i] = {**hits[key], "error": None, "cached": True}
        else:
            todo.setdefault(key, []).append(i)
    if not todo:
        return results
    if spec.backend not in ("openai", "transformers"):
        raise ModelError(f"unknown backend {spec.backend!r}", hint="use `openai` or `transformers`")
    work = [(key, requests[idx[0]]) for key, idx in todo.items()]
    with _ticker(description, len(requests), done=len(requests) - sum(len(v) for v in todo.values())) as tick:
        def finish(j: int, result: dict) -> None:
            key, request = work[j]
            if result["error"] is None:
                _save(cache, key, request, {k: v for k, v in result.items() if k not in ("cached", "error")}, spec.backend)
            for i in todo[key]:
                results[i] = dict(result)
            tick(len(todo[key]))

        if spec.backend == "openai":
            _run_async(_call_openai(spec, [r for _, r in work], finish))
        else:
            _call_transformers(spec, [r for _, r in work], finish)
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


def _result(text=None, *, error=None, finish_reason=None, prompt_tokens=None, completion_tokens=None, latency_s=None, logprobs=None) -> dict:
    out = {"text": text, "finish_reason": finish_reason, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "latency_s": latency_s, "error": error, "cached": False}
    if logprobs is not None:
        out["logprobs"] = logprobs
    return out


def _run_async(coro):
    """asyncio.run, also when the caller already runs an event loop (notebooks, async judges)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ---------------------------------------------------------------- openai backend


def _limiter(per_minute: float | None, largest: float = 1.0):
    """A leaky bucket holding about one second of budget (at least one request), so a limit paces from the start."""
    if not per_minute:
        return None
    from aiolimiter import AsyncLimiter

    capacity = max(per_minute / 60, largest, 1.0)
    return AsyncLimiter(capacity, capacity * 60 / per_minute)


def _estimate_tokens(request: dict) -> int:
    chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else len(json.dumps(m.get("content")))
                for m in request["messages"])
    return chars // 4 + 1 + (request.get("max_tokens") or DEFAULT_MAX_TOKENS)


async def _call_openai(spec: ModelSpec, requests: list[dict], finish) -> None:
    import httpx2
    import openai

    key = api_key(spec)
    limits = httpx2.Limits(max_connections=spec.concurrency + 8, max_keepalive_connections=spec.concurrency + 8)
    clients = [openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=spec.timeout,  # _one_openai retries
                                  http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=spec.timeout))
               for url in (spec.base_urls or [None])]
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
                await tpm.acquire(estimates[j])
            try:
                result = await _one_openai(clients[j % len(clients)], spec, requests[j])
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


async def _one_openai(client, spec: ModelSpec, request: dict) -> dict:
    """One call: at most 1 + max_retries requests, whatever failed (status, timeout, connection, a 200 that is
    not a chat completion); then a result with the reason. The client's own retries are off (max_retries=0 on
    the client) so that one loop, here, counts every attempt."""
    import openai
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    started = time.perf_counter()
    attempts = 0

    def failed(reason: str, **kw) -> dict:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return _result(error=reason + tries, latency_s=time.perf_counter() - started, **kw)

    try:
        async for attempt in AsyncRetrying(retry=retry_if_exception(_retryable), stop=stop_after_attempt(1 + spec.max_retries),
                                           wait=_backoff, reraise=True):
            with attempt:
                attempts += 1
                response = await client.chat.completions.create(model=spec.model, **request)
                choice = _first_choice(response)
    except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
        raise ModelError(f"{client.base_url} refused model {spec.model!r}: HTTP {e.status_code}: {_message(e)}",
                         hint="check the model name, base_url and the API key variable (api_key_env)") from e
    except openai.APITimeoutError:
        return failed(f"timed out after {spec.timeout}s")
    except openai.APIStatusError as e:
        return failed(f"HTTP {e.status_code}: {_message(e)}")
    except openai.APIConnectionError as e:
        cause = e.__cause__ or e
        return failed(f"connection error: {type(cause).__name__}: {cause}")
    except (_Malformed, json.JSONDecodeError, openai.APIResponseValidationError) as e:
        return failed(f"malformed answer: {e}" if isinstance(e, _Malformed) else f"malformed answer: {type(e).__name__}: {e}")
    except Exception as e:  # one bad call must not stop the others; its reason is kept
        return failed(f"{type(e).__name__}: {e}")
    latency = time.perf_counter() - started
    usage = getattr(response, "usage", None)
    tokens = {k: v for k in ("prompt_tokens", "completion_tokens") if isinstance(v := getattr(usage, k, None), int)}
    finish_reason = getattr(choice, "finish_reason", None)
    content = getattr(choice.message, "content", None)
    if not isinstance(content, str):  # a refusal or a tool call: an answer, not a fault; asking again gives the same
        refusal = getattr(choice.message, "refusal", None)
        return _result(error=f"refused: {refusal}" if refusal else "response has no text", finish_reason=finish_reason,
                       latency_s=latency, **tokens)
    logprobs = None
    if request.get("logprobs"):
        lp = getattr(choice, "logprobs", None)
        content_lp = getattr(lp, "content", None) or []
        logprobs = [{"token": t.token, "logprob": t.logprob,
                     "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in (t.top_logprobs or [])]} for t in content_lp]
    return _result(content, finish_reason=finish_reason, latency_s=round(latency, 4), logprobs=logprobs, **tokens)


class _Malformed(Exception):
    """A 200 answer that is not a chat completion: a proxy's error page, a misrouted base_url, JSON of another
    shape, no choices. Retried like a 500, then recorded with what came instead."""


def _first_choice(response):
    """The first choice of a conforming chat completion, or _Malformed saying what came instead."""
    if isinstance(response, (str, bytes)):  # the SDK hands back the body as text when it is not JSON
        text = response.decode(errors="replace") if isinstance(response, bytes) else response
        raise _Malformed(f"HTTP 200 with a body that is not JSON: {_snippet(text)!r}")
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise _Malformed(f"HTTP 200 with JSON that is not a chat completion: {_snippet(_dump(response))}")
    if not choices:
        raise _Malformed("HTTP 200 with no choices")
    if getattr(choices[0], "message", None) is None:
        raise _Malformed(f"HTTP 200 whose first choice has no message: {_snippet(_dump(response))}")
    return choices[0]


def _dump(response) -> str:
    try:
        return json.dumps(response.to_dict(), ensure_ascii=False)
    except Exception:
        return repr(response)


def _snippet(text: str, width: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width] + "…"


MAX_RETRY_AFTER_S = 120  # a server asking for a longer pause is not retried (the SDK's rule too)
BACKOFF_S = (0.5, 8.0)  # first and longest pause between attempts when the server names none (the SDK's figures)


def _retryable(error: BaseException) -> bool:
    """What is worth asking again: timeouts, dropped connections, 408/409/429/5xx, and 200s that are not completions."""
    import openai

    if isinstance(error, (_Malformed, json.JSONDecodeError, openai.APIResponseValidationError, openai.APIConnectionError)):
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


def _backoff(retry_state) -> float:
    """The server's Retry-After when it gave one, else 0.5 s doubling to 8 s, less up to 25 % jitter."""
    wait = _retry_after(retry_state.outcome.exception())
    if wait is not None and 0 < wait <= MAX_RETRY_AFTER_S:
        return wait
    first, longest = BACKOFF_S
    return min(first * 2 ** (retry_state.attempt_number - 1), longest) * (1 - 0.25 * random.random())


def _message(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(error, "message", error))


# ---------------------------------------------------------------- transformers backend

_LOADED: dict[tuple[str, str], tuple] = {}


def load_model(name: str, device: str | None = None):
    """(model, tokenizer, device), loaded once per process and device."""
    import torch

    from pipeline.models import resolve_llm

    path = resolve_llm(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (path, device) not in _LOADED:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:
            raise ModelError(f"could not load model {name!r} from {path}: {e}",
                             hint="pass a directory holding config.json and weights, or embedded:smollm2") from e
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _LOADED[(path, device)] = (model, tokenizer, device)
    return _LOADED[(path, device)]


def _call_transformers(spec: ModelSpec, requests: list[dict], finish) -> None:
    import torch

    model, tokenizer, device = load_model(spec.model, spec.device)
    prompts = [tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in requests]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    # like lengths together: little padding, few rows waiting for a long neighbour
    order = sorted(range(len(requests)), key=lambda j: (requests[j].get("max_tokens") or DEFAULT_MAX_TOKENS, len(ids[j])))
    for start in range(0, len(order), spec.batch_size):
        batch = order[start : start + spec.batch_size]
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                outputs = _generate_batch(model, tokenizer, device, [ids[j] for j in batch], [requests[j] for j in batch])
        except torch.OutOfMemoryError as e:
            raise ModelError(f"out of memory generating a batch of {len(batch)} on {device}", hint="lower batch_size") from e
        latency = round((time.perf_counter() - started) / len(batch), 4)  # the batch's time, shared by its rows
        for j, out in zip(batch, outputs):
            finish(j, _result(**out, latency_s=latency))


def _generate_batch(model, tokenizer, device, ids: list[list[int]], requests: list[dict]) -> list[dict]:
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
    width = enc["input_ids"].shape[1]
    max_tokens = [r.get("max_tokens") or DEFAULT_MAX_TOKENS for r in requests]
    stops = [r.get("stop") or [] for r in requests]
    want_logprobs = any(r.get("logprobs") for r in requests)
    stopper = _RowStop(tokenizer, width, max_tokens, stops)
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=max(max_tokens), pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=eos, bos_token_id=model.generation_config.bos_token_id,
                              return_dict_in_generate=True, output_logits=want_logprobs)
    out = model.generate(**enc, generation_config=config, logits_processor=LogitsProcessorList([_RowSampler(requests, device)]),
                         stopping_criteria=StoppingCriteriaList([stopper]))
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    results = []
    for row, request in enumerate(requests):
        generated = out.sequences[row, width:].tolist()
        n = min(len(generated), max_tokens[row], stopper.done_at[row] or len(generated))
        finish = "length"
        for k, token in enumerate(generated[:n]):
            if token in eos_ids:
                n, finish = k + 1, "stop"
                break
        text = tokenizer.decode(generated[:n], skip_special_tokens=True)
        for stop in stops[row]:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        result = {"text": text, "finish_reason": finish, "prompt_tokens": len(ids[row]), "completion_tokens": n}
        if request.get("logprobs"):
            result["logprobs"] = _logprobs(tokenizer, out.logits, row, generated[:n], request.get("top_logprobs") or 0)
        results.append(result)
    return results


def _logprobs(tokenizer, logits, row: int, tokens: list[int], top: int) -> list[dict]:
    import torch

    out = []
    for step, token in enumerate(tokens):
        logp = torch.log_softmax(logits[step][row].float(), dim=-1)
        entry = {"token": tokenizer.decode([token]), "logprob": float(logp[token]), "top_logprobs": []}
        if top:
            values, indices = logp.topk(top)
            entry["top_logprobs"] = [{"token": tokenizer.decode([i]), "logprob": float(v)} for v, i in zip(values.tolist(), indices.tolist())]
        out.append(entry)
    return out


class _RowSampler:
    """Per-row sampling as a logits processor under greedy decoding: temperature, top-p, then Gumbel noise
    from the row's own seeded generator, so argmax draws from the row's distribution. Temperature 0 = greedy."""

    def __init__(self, requests: list[dict], device: str):
        import torch

        temps = [1.0 if r.get("temperature") is None else float(r["temperature"]) for r in requests]
        self.rows = [i for i, t in enumerate(temps) if t > 0]
        self.temps = torch.tensor([temps[i] for i in self.rows], device=device).unsqueeze(1)
        self.top_p = torch.tensor([float(requests[i].get("top_p") or 1.0) for i in self.rows], device=device).unsqueeze(1)
        self.generators = []
        for i in self.rows:
            seed = requests[i].get("seed")
            g = torch.Generator(device=device)
            g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
            self.generators.append(g)

    def __call__(self, input_ids, scores):
        import torch

        if not self.rows:
            return scores
        logits = scores[self.rows].float() / self.temps
        if bool((self.top_p < 1).any()):
            sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = (cum - sorted_logits.softmax(dim=-1)) > self.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(1, sorted_idx, drop), -math.inf)
        noise = torch.stack([torch.rand(logits.shape[1], generator=g, device=logits.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(noise.clamp_(1e-20, 1.0 - 1e-7)))
        scores = scores.clone()
        scores[self.rows] = (logits + gumbel).to(scores.dtype)
        return scores


class _RowStop:
    """Stops each row at its own max_tokens or stop string; remembers when (generation pads finished rows)."""

    def __init__(self, tokenizer, width: int, max_tokens: list[int], stops: list[list[str]]):
        self.tokenizer, self.width, self.max_tokens, self.stops = tokenizer, width, max_tokens, stops
        self.done_at: list[int | None] = [None] * len(max_tokens)
        self.tail = max((len(s) for row in stops for s in row), default=0) + 8

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        n = input_ids.shape[1] - self.width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if self.done_at[row] is not None:
                done[row] = True
                continue
            hit = n >= self.max_tokens[row]
            if not hit and self.stops[row]:
                tail = self.tokenizer.decode(input_ids[row, self.width :][-self.tail :].tolist(), skip_special_tokens=True)
                hit = any(s in tail for s in self.stops[row])
            if hit:
                self.done_at[row] = n
                done[row] = True
        return done
