"""A real OpenAI-compatible HTTP server on 127.0.0.1: the stand-in for paid LLM APIs in tests and bench.

The real `openai` client talks to it over real sockets, so retries, timeouts and connection handling
are exercised for real. Behaviour is scripted:

- `latency`: seconds every request takes;
- `script("429:1", "ok", ...)`: actions for the next requests, in arrival order;
- `fault_rates={"500": 0.1, "reset": 0.05}` with `seed`: random faults at set rates;
- `respond(request_json) -> str | dict`: the reply (a dict may set content, finish_reason, usage,
  logprobs, delay or a fault for this one request).

The Batch API too: POST /v1/files (multipart upload), GET /v1/files/{id}/content, POST /v1/batches, GET
/v1/batches/{id}, POST /v1/batches/{id}/cancel. A batch is validated on its first retrieve (bad JSON, no
custom_id, a repeated custom_id, another url, a model not in `models` fail it, with errors naming lines),
then answers its lines over `batch_polls` retrieves, each line as a chat request would be (through `_admit`
and `respond`, so it is counted, and scripted faults apply: a 4xx/5xx becomes a non-200 line, other faults an
error line). `batch_outcomes` scripts the next batches created, in order: {"polls": N} (retrieves to finish),
{"expire_after": K} (expired after answering K lines; the rest are `batch_expired` lines in the error file
unless "list_unreached": False),
{"errors": [...]} (failed, with these validation errors). `batches` holds every batch created, by id;
`batch_polls_left(n)` makes the unfinished ones finish within n more retrieves.

Servers that lack something real ones lack: `api_key="k"` refuses other keys (401, /v1/models too), `models=[...]`
serves only those names (404 model_not_found for another), `json_schema=False` refuses a `json_schema`
response_format (400, as a server without structured outputs), `logprobs=False` answers without logprobs even when
asked, `batch_api=False` has no /v1/files and /v1/batches (404).

Actions: "ok", "429" (no Retry-After), "429:SECONDS" (with Retry-After), "500", "503", "503:SECONDS",
"hang" / "hang:SECONDS" (no reply; the client must time out), "reset" (TCP RST), "malformed" (200 with
invalid JSON), "truncated" (the body stops short of its Content-Length), "400", "401", "404", and 200s that
are not a chat completion: "html" (a proxy's text/html error page), "wrongjson" (JSON of another shape),
"nochoices" (`choices: []`), "nomessage" (a choice without a message); "badlogprobs" (a completion whose
logprobs are not token entries: malformed only for a request that asked for them).

It counts requests: `total`, `prompt_counts` (by the last message's content), `request_counts` (by the
whole body), `statuses` (what it answered). GET /stats returns them as JSON, so a test can read the counts
of a server running in another process:

    python tests/openai_server.py --port 8123 --latency 0.05 --fault 429=0.1
"""

import argparse
import email.parser
import email.policy
import itertools
import json
import random
import signal
import socket
import struct
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOT_COMPLETIONS = ("html", "wrongjson", "nochoices", "nomessage")
FAULTS = (
    "ok",
    "429",
    "500",
    "503",
    "hang",
    "reset",
    "malformed",
    "truncated",
    "400",
    "401",
    "404",
    "badlogprobs",
    *NOT_COMPLETIONS,
)


def default_respond(request: dict) -> str:
    """A deterministic reply that differs with the prompt, temperature and seed."""
    prompt = _prompt_of(request)
    words = prompt.split()[:12]
    return " ".join(["Answer", f"(t={request.get('temperature')},", f"seed={request.get('seed')}):", *words, "— done."])


def structured_respond(request: dict) -> str:
    """default_respond, except that a request with a `json_schema` response format gets JSON of that schema (as a
    server with structured outputs gives): judges parse it (benchmarks of whole runs)."""
    schema = ((request.get("response_format") or {}).get("json_schema") or {}).get("schema")
    if not schema:
        return default_respond(request)
    seed = sum(map(ord, _prompt_of(request)))

    def instance(node: dict, depth: int = 0):
        kind = node.get("type")
        if kind == "object":
            return {name: instance(sub, depth + 1) for name, sub in (node.get("properties") or {}).items()}
        if node.get("enum"):
            return node["enum"][seed % len(node["enum"])]
        if kind in ("number", "integer"):
            low, high = node.get("minimum", 1), node.get("maximum", 5)
            return low + seed % (int(high - low) + 1)
        if kind == "boolean":
            return bool(seed % 2)
        return " ".join(_prompt_of(request).split()[: 3 + seed % 8]) or "ok"

    return json.dumps(instance(schema))


def _prompt_of(request: dict) -> str:
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
    return content if isinstance(content, str) else json.dumps(content, sort_keys=True)


def _ntokens(text: str) -> int:
    return len(text.split())


class OpenAIServer:
    """Serve /v1/chat/completions and /v1/models on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        port: int = 0,
        *,
        latency: float = 0.0,
        respond=None,
        fault_rates: dict | None = None,
        seed: int = 0,
        hang_s: float = 30.0,
        api_key: str | None = None,
        models: list[str] | None = None,
        keep_bodies: bool = True,
        batch_api: bool = True,
        json_schema: bool = True,
        logprobs: bool = True,
    ):
        self.latency = latency
        self.json_schema = json_schema  # False: a json_schema response_format is refused with a 400
        self.logprobs = logprobs  # False: answers carry no logprobs, asked for or not
        self.batch_api = batch_api  # False: /v1/files and /v1/batches are 404, as on vLLM's server
        self.respond = respond or default_respond
        self.fault_rates = dict(fault_rates or {})
        self.hang_s = hang_s
        self.api_key = api_key
        self.models = models
        self.keep_bodies = keep_bodies
        self._random = random.Random(seed)
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.reset_counts()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self.files: dict[str, bytes] = {}  # uploaded and written batch files, by id
        self.batches: dict[
            str, dict
        ] = {}  # every batch created, by id (the Batch object, and its lines under "_lines")
        self.batch_polls = 1
        self.batch_outcomes: deque[dict] = deque()
        self._ids = itertools.count(1)
        self._batch_lock = threading.Lock()  # one batch request at a time: retrieves advance batches

    @property
    def url(self) -> str:
        """base_url for the openai client."""
        return f"http://127.0.0.1:{self.port}/v1"

    # lifecycle
    def start(self) -> "OpenAIServer":
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"openai-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # scripting and counting
    def script(self, *actions: str) -> None:
        """Queue actions for the next requests, in arrival order (then fault_rates apply again)."""
        with self._lock:
            self._script.extend(actions)

    def reset_counts(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.total = 0
            self.prompt_counts: Counter[str] = Counter()
            self.request_counts: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()
            self.bodies: list[dict] = []
            self.arrivals: list[float] = []  # time.monotonic() of each request
            self.answered: list[
                tuple[float, float, str]
            ] = []  # (arrived, answered, request_key) of each 200, time.monotonic()
            self.in_flight = 0
            self.max_in_flight = 0

    def stats(self) -> dict:
        with self._lock:
            return {
                "total": self.total,
                "prompt_counts": dict(self.prompt_counts),
                "request_counts": dict(self.request_counts),
                "statuses": dict(self.statuses),
                "max_in_flight": self.max_in_flight,
                "batches": len(self.batches),
            }

    @staticmethod
    def request_key(request: dict) -> str:
        """The identity of a request as `request_counts` keys it."""
        return json.dumps(request, sort_keys=True, ensure_ascii=False)

    def _admit(self, request: dict) -> str:
        """Count the request and pick its action."""
        with self._lock:
            self.total += 1
            self.prompt_counts[_prompt_of(request)] += 1
            self.request_counts[self.request_key(request)] += 1
            if self.keep_bodies:
                self.bodies.append(request)
                self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self._script:
                return self._script.popleft()
            roll = self._random.random()
        for action, rate in self.fault_rates.items():
            if roll < rate:
                return action
            roll -= rate
        return "ok"

    def _done(self, status: str, request: dict, arrived: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.statuses[status] += 1
            if status == "200" and self.keep_bodies:
                self.answered.append((arrived, time.monotonic(), self.request_key(request)))

    # the Batch API
    def batch_polls_left(self, polls: int) -> None:
        """Make every unfinished batch finish within `polls` more retrieves."""
        with self._lock:
            for batch in self.batches.values():
                batch["_polls_left"] = polls

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _create_batch(self, params: dict) -> tuple[int, dict]:
        data = self.files.get(params.get("input_file_id"))
        if data is None:
            return 404, _error(f"No such File object: {params.get('input_file_id')}", "invalid_request_error")
        if params.get("endpoint") != "/v1/chat/completions":
            return 400, _error(
                f"scripted server batches only /v1/chat/completions, not {params.get('endpoint')}",
                "invalid_request_error",
            )
        lines, errors, seen = [], [], set()
        for n, text in enumerate(data.decode().splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                errors.append(
                    {
                        "code": "invalid_json_line",
                        "line": n,
                        "message": "This line is not parseable as valid JSON.",
                        "param": None,
                    }
                )
                continue
            if not line.get("custom_id"):
                errors.append(
                    {
                        "code": "missing_required_parameter",
                        "line": n,
                        "message": "custom_id is missing",
                        "param": "custom_id",
                    }
                )
            elif line["custom_id"] in seen:
                errors.append(
                    {
                        "code": "duplicate_custom_id",
                        "line": n,
                        "message": "The custom_id for this request is a duplicate.",
                        "param": "custom_id",
                    }
                )
            elif line.get("url") != params["endpoint"]:
                errors.append(
                    {
                        "code": "invalid_url",
                        "line": n,
                        "message": f"url {line.get('url')!r} is not the batch's endpoint",
                        "param": "url",
                    }
                )
            elif self.models is not None and (line.get("body") or {}).get("model") not in self.models:
                errors.append(
                    {
                        "code": "model_not_found",
                        "line": n,
                        "param": "body.model",
                        "message": f"The model {(line.get('body') or {}).get('model')!r} does not exist",
                    }
                )
            seen.add(line.get("custom_id"))
            lines.append(line)
        outcome = self.batch_outcomes.popleft() if self.batch_outcomes else {}
        errors += outcome.get("errors", [])
        batch = {
            "id": self._new_id("batch"),
            "object": "batch",
            "endpoint": params["endpoint"],
            "errors": None,
            "input_file_id": params["input_file_id"],
            "completion_window": params.get("completion_window"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": params.get("metadata"),
            "_lines": lines,
            "_errors": errors,
            "_answered": 0,
            "_out": [],
            "_err": [],
            "_retrieves": 0,
            "_list_unreached": outcome.get("list_unreached", True),
            "_polls_left": outcome.get("polls", self.batch_polls),
            "_stop_at": outcome.get("expire_after"),
        }
        with self._lock:
            self.batches[batch["id"]] = batch
        return 200, _public(batch)

    def _retrieve_batch(self, batch_id: str) -> dict:
        """The batch after one more step of work: validation, then its share of lines, then its files."""
        batch = self.batches[batch_id]
        batch["_retrieves"] += 1
        now = int(time.time())
        if batch["status"] == "validating":
            if batch["_errors"]:
                batch.update(status="failed", failed_at=now, errors={"object": "list", "data": batch["_errors"]})
                return _public(batch)
            batch.update(status="in_progress", in_progress_at=now)
        if batch["status"] == "cancelling":
            self._end_batch(batch, "cancelled")
        elif batch["status"] == "in_progress":
            stop_at = (
                len(batch["_lines"]) if batch["_stop_at"] is None else min(batch["_stop_at"], len(batch["_lines"]))
            )
            polls = max(batch["_polls_left"], 1)
            share = (
                stop_at - batch["_answered"]
            ) // polls  # the last poll answers the rest; many polls left: maybe none
            for line in batch["_lines"][batch["_answered"] : batch["_answered"] + share]:
                self._answer_line(batch, line)
            batch["_polls_left"] = polls - 1
            if batch["_answered"] >= stop_at:
                self._end_batch(batch, "completed" if stop_at == len(batch["_lines"]) else "expired")
        return _public(batch)

    def _answer_line(self, batch: dict, line: dict) -> None:
        """One line, as /v1/chat/completions would answer it (counted; script, fault_rates and respond apply)."""
        request = line.get("body") or {}
        arrived = time.monotonic()
        action = status = self._admit(request)
        try:
            reply = None
            if action == "ok":
                reply = self.respond(request)
                if isinstance(reply, dict) and reply.get("fault"):
                    action = str(reply["fault"])
            name = action.partition(":")[0]
            record = {
                "id": self._new_id("batch_req"),
                "custom_id": line.get("custom_id"),
                "response": None,
                "error": None,
            }
            if name == "ok":
                record["response"] = {"status_code": 200, "request_id": "req-fake", "body": completion(request, reply)}
                status = "200"
            elif name in ("400", "401", "404", "429", "500", "503"):
                record["response"] = {
                    "status_code": int(name),
                    "request_id": "req-fake",
                    "body": _error(f"scripted {name}", "invalid_request_error"),
                }
                status = name
            else:
                record["error"] = {"code": "server_error", "message": f"scripted {name}"}
            (batch["_out"] if status == "200" else batch["_err"]).append(record)
            batch["request_counts"]["completed" if status == "200" else "failed"] += 1
            batch["_answered"] += 1
        finally:
            self._done(status, request, arrived)

    def _end_batch(self, batch: dict, status: str) -> None:
        """Write the output and error files (OpenAI's shape: 200s in one, the rest in the other) and end the batch."""
        if status == "expired" and batch["_list_unreached"]:
            batch["_err"] += [
                {
                    "id": self._new_id("batch_req"),
                    "custom_id": line.get("custom_id"),
                    "response": None,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                }
                for line in batch["_lines"][batch["_answered"] :]
            ]
        for kind, records in (("output_file_id", batch["_out"]), ("error_file_id", batch["_err"])):
            if records:
                file_id = self._new_id("file")
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in records).encode()
                batch[kind] = file_id
        batch.update(status=status, **{f"{status}_at": int(time.time())})


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """name -> value of a multipart/form-data body (what the openai client uploads)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # 64+ clients connect at once; the default backlog of 5 would stall them
    owner: OpenAIServer

    def handle_error(self, request, client_address):
        pass  # resets and client disconnects are part of the script


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format, *args):
        pass

    # routes
    def do_GET(self):
        owner = self.server.owner
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
                return self._send(401, _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
            names = owner.models or ["fake-model"]
            self._send(
                200,
                {
                    "object": "list",
                    "data": [{"id": n, "object": "model", "created": 0, "owned_by": "prefab-tests"} for n in names],
                },
            )
        elif self.path.rstrip("/") == "/stats":
            self._send(200, owner.stats())
        elif self.path.startswith(("/v1/files/", "/v1/batches")) and owner.batch_api:
            self._batch_api(self.path.partition("?")[0].rstrip("/"), b"")
        else:
            self._send(404, _error("not found", "invalid_request_error"))

    def do_POST(self):
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith(("/v1/files", "/v1/batches")) and owner.batch_api:
            return self._batch_api(self.path.rstrip("/"), body)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self._send(404, _error(f"no route {self.path}", "invalid_request_error"))
        try:
            request = json.loads(body)
        except ValueError:
            return self._send(400, _error("request body is not JSON", "invalid_request_error"))
        arrived = time.monotonic()
        action = owner._admit(request)
        status = action
        try:
            status = self._answer(owner, request, action)
        finally:
            owner._done(status, request, arrived)

    def _batch_api(self, path: str, body: bytes) -> None:
        owner = self.server.owner
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            return self._send(401, _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
        parts = path.split("/")[
            2:
        ]  # ["files"] / ["files", id, "content"] / ["batches"] / ["batches", id] / ["batches", id, "cancel"]
        post = self.command == "POST"
        if post and parts == ["files"]:
            form = _multipart(self.headers.get("Content-Type", ""), body)
            if form.get("purpose") != b"batch" or not form.get("file"):
                return self._send(400, _error("expected a file with purpose batch", "invalid_request_error"))
            file_id = owner._new_id("file")
            owner.files[file_id] = form["file"]
            return self._send(
                200,
                {
                    "id": file_id,
                    "object": "file",
                    "bytes": len(form["file"]),
                    "created_at": int(time.time()),
                    "filename": "batch.jsonl",
                    "purpose": "batch",
                    "status": "processed",
                },
            )
        if not post and len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and parts[1] in owner.files:
            return self._send_raw(200, owner.files[parts[1]], content_type="application/octet-stream")
        if post and parts == ["batches"]:
            return self._send(*owner._create_batch(json.loads(body or b"{}")))
        if not post and parts == ["batches"]:
            listed = [_public(b) for b in reversed(owner.batches.values())]
            return self._send(
                200, {"object": "list", "data": listed, "first_id": None, "last_id": None, "has_more": False}
            )
        if len(parts) >= 2 and parts[0] == "batches" and parts[1] in owner.batches:
            with owner._batch_lock:
                if not post and len(parts) == 2:
                    return self._send(200, owner._retrieve_batch(parts[1]))
                if post and parts[2:] == ["cancel"]:
                    batch = owner.batches[parts[1]]
                    if batch["status"] in ("validating", "in_progress"):
                        batch["status"] = "cancelling"
                    return self._send(200, _public(batch))
        return self._send(404, _error(f"no such object or route: {self.command} {path}", "invalid_request_error"))

    # behaviour
    def _answer(self, owner: OpenAIServer, request: dict, action: str) -> str:
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            self._send(401, _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
            return "401"
        if owner.models is not None and request.get("model") not in owner.models:
            self._send(
                404,
                _error(
                    f"The model {request.get('model')!r} does not exist", "invalid_request_error", "model_not_found"
                ),
            )
            return "404"
        if not owner.json_schema and (request.get("response_format") or {}).get("type") == "json_schema":
            self._send(400, _error("response_format type 'json_schema' is not supported", "invalid_request_error"))
            return "400"
        if not owner.logprobs:
            request = {k: v for k, v in request.items() if k not in ("logprobs", "top_logprobs")}
        reply = None
        if action == "ok":
            reply = owner.respond(request)
            if isinstance(reply, dict) and reply.get("fault"):
                action = str(reply["fault"])
                if reply.get("retry_after") is not None:
                    action += f":{reply['retry_after']}"
        name, _, arg = action.partition(":")
        delay = reply.get("delay", owner.latency) if isinstance(reply, dict) else owner.latency
        if name == "hang":
            owner._stopping.wait(float(arg) if arg else owner.hang_s)
            self.close_connection = True
            return "hang"
        if delay:
            time.sleep(delay)
        if name == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()  # linger 0: the peer gets a TCP RST
            self.close_connection = True
            return "reset"
        if name in ("429", "500", "503"):
            messages = {
                "429": ("Rate limit reached", "rate_limit_exceeded"),
                "500": ("The server had an error", "server_error"),
                "503": ("The engine is currently overloaded", "server_error"),
            }
            text, kind = messages[name]
            self._send(int(name), _error(text, kind), headers={"Retry-After": arg} if arg else None)
            return name
        if name in ("400", "401", "404"):
            self._send(int(name), _error(f"scripted {name}", "invalid_request_error"))
            return name
        if name == "malformed":
            self._send_raw(
                200,
                b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"message": {"content": "trunc',
            )
            return "malformed"
        if name == "html":
            page = (
                b"<html><head><title>502 Bad Gateway</title></head>"
                b"<body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
            )
            self._send_raw(200, page, content_type="text/html")
            return "html"
        payload = completion(request, owner.respond(request) if name == "badlogprobs" else reply)
        if name in ("wrongjson", "nochoices", "nomessage", "badlogprobs"):
            wrong = {
                "wrongjson": {"status": "error", "detail": "upstream connect error"},
                "nochoices": {**payload, "choices": []},
                "nomessage": {**payload, "choices": [{"index": 0, "finish_reason": "stop"}]},
                "badlogprobs": _bad_logprobs(payload),
            }[name]
            self._send(200, wrong)
            return name
        if name == "truncated":
            data = json.dumps(payload).encode()
            self._send_raw(200, data[: len(data) // 2], length=len(data))
            self.close_connection = True
            return "truncated"
        self._send(200, payload)
        return "200"

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers=headers)

    def _send_raw(
        self,
        status: int,
        data: bytes,
        headers: dict | None = None,
        length: int | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Status line, headers and body in one write (no Nagle/delayed-ACK stalls)."""
        lines = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(data) if length is None else length}",
            "x-request-id: req-fake",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        try:
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        except OSError:
            self.close_connection = True


def _error(message: str, kind: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def completion(request: dict, reply) -> dict:
    """A chat.completion object; max_tokens and stop are applied to the reply as a real server would
    (tests/fake_backend.py answers with it too)."""
    reply = reply if isinstance(reply, dict) else {"content": reply}
    content = reply.get("content")
    finish = reply.get("finish_reason")
    if isinstance(content, str) and finish is None:
        finish = "stop"
        for stop in [request["stop"]] if isinstance(request.get("stop"), str) else request.get("stop") or []:
            if stop and stop in content:
                content = content[: content.index(stop)]
        limit = request.get("max_tokens") or request.get("max_completion_tokens")
        words = content.split(" ")
        if limit and len(words) > limit:
            content, finish = " ".join(words[:limit]), "length"
    prompt_tokens = sum(
        _ntokens(m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content")))
        for m in request.get("messages") or []
        if isinstance(m, dict)
    )
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _ntokens(content or ""), **(reply.get("usage") or {})}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    message = {"role": "assistant", "content": content, "refusal": reply.get("refusal")}
    choice = {"index": 0, "message": message, "finish_reason": finish or "stop", "logprobs": None}
    if request.get("logprobs"):
        choice["logprobs"] = {
            "content": reply.get("logprobs") or _logprobs(content or "", request.get("top_logprobs") or 0)
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake-model"),
        "choices": [choice],
        "usage": usage,
    }


def _bad_logprobs(payload: dict) -> dict:
    """A completion with its text whose logprobs are strings, not token entries."""
    return {**payload, "choices": [{**payload["choices"][0], "logprobs": {"content": ["not", "tokens"]}}]}


def _logprobs(content: str, top: int) -> list[dict]:
    out = []
    for i, word in enumerate(content.split(" ")):
        lp = -0.1 * (i % 5)
        alts = [{"token": word, "logprob": lp, "bytes": None}] + [
            {"token": f"alt{j}", "logprob": lp - j - 1, "bytes": None} for j in range(top - 1)
        ]
        out.append({"token": word, "logprob": lp, "bytes": None, "top_logprobs": alts[:top]})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="ACTION=RATE", help="e.g. 429:1=0.1 or reset=0.05"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--no-bodies", action="store_true", help="do not keep request bodies (long benchmarks)")
    parser.add_argument(
        "--structured", action="store_true", help="answer json_schema requests with JSON of the schema (judges)"
    )
    args = parser.parse_args(argv)
    rates = {}
    for item in args.fault:
        action, _, rate = item.rpartition("=")
        rates[action] = float(rate)
    server = OpenAIServer(
        args.port,
        latency=args.latency,
        fault_rates=rates,
        seed=args.seed,
        hang_s=args.hang_s,
        keep_bodies=not args.no_bodies,
        respond=structured_respond if args.structured else None,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print(f"READY {server.url}", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    main()
