"""A real OpenAI-compatible HTTP server on 127.0.0.1: the stand-in for paid LLM APIs in tests and bench.

The real `openai` client talks to it over real sockets, so retries, timeouts and connection handling
are exercised for real. Behaviour is scripted:

- `latency`: seconds every request takes;
- `script("429:1", "ok", ...)`: actions for the next requests, in arrival order;
- `fault_rates={"500": 0.1, "reset": 0.05}` with `seed`: random faults at set rates;
- `respond(request_json) -> str | dict`: the reply (a dict may set content, finish_reason, usage,
  logprobs, delay or a fault for this one request).

Actions: "ok", "429" (no Retry-After), "429:SECONDS" (with Retry-After), "500", "503", "503:SECONDS",
"hang" / "hang:SECONDS" (no reply; the client must time out), "reset" (TCP RST), "malformed" (200 with
invalid JSON), "truncated" (the body stops short of its Content-Length), "400", "401", "404", and 200s that
are not a chat completion: "html" (a proxy's text/html error page), "wrongjson" (JSON of another shape),
"nochoices" (`choices: []`), "nomessage" (a choice without a message).

It counts requests: `total`, `prompt_counts` (by the last message's content), `request_counts` (by the
whole body), `statuses` (what it answered). GET /stats returns them as JSON, so a test can read the counts
of a server running in another process:

    python tests/openai_server.py --port 8123 --latency 0.05 --fault 429=0.1
"""

import argparse
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
FAULTS = ("ok", "429", "500", "503", "hang", "reset", "malformed", "truncated", "400", "401", "404", *NOT_COMPLETIONS)


def default_respond(request: dict) -> str:
    """A deterministic reply that differs with the prompt, temperature and seed."""
    prompt = _prompt_of(request)
    words = prompt.split()[:12]
    return " ".join(["Answer", f"(t={request.get('temperature')},", f"seed={request.get('seed')}):", *words, "— done."])


def _prompt_of(request: dict) -> str:
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
    return content if isinstance(content, str) else json.dumps(content, sort_keys=True)


def _ntokens(text: str) -> int:
    return len(text.split())


class OpenAIServer:
    """Serve /v1/chat/completions and /v1/models on 127.0.0.1 in a background thread."""

    def __init__(self, port: int = 0, *, latency: float = 0.0, respond=None, fault_rates: dict | None = None,
                 seed: int = 0, hang_s: float = 30.0, api_key: str | None = None, models: list[str] | None = None,
                 keep_bodies: bool = True):
        self.latency = latency
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

    @property
    def url(self) -> str:
        """base_url for the openai client."""
        return f"http://127.0.0.1:{self.port}/v1"

    # lifecycle
    def start(self) -> "OpenAIServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"openai-server-{self.port}", daemon=True)
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
            self.answered: list[tuple[float, float, str]] = []  # (arrived, answered, request_key) of each 200, time.monotonic()
            self.in_flight = 0
            self.max_in_flight = 0

    def stats(self) -> dict:
        with self._lock:
            return {"total": self.total, "prompt_counts": dict(self.prompt_counts), "request_counts": dict(self.request_counts),
                    "statuses": dict(self.statuses), "max_in_flight": self.max_in_flight}

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
            names = owner.models or ["fake-model"]
            self._send(200, {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "prefab-tests"} for n in names]})
        elif self.path.rstrip("/") == "/stats":
            self._send(200, owner.stats())
        else:
            self._send(404, _error("not found", "invalid_request_error"))

    def do_POST(self):
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
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

    # behaviour
    def _answer(self, owner: OpenAIServer, request: dict, action: str) -> str:
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            self._send(401, _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
            return "401"
        if owner.models is not None and request.get("model") not in owner.models:
            self._send(404, _error(f"The model {request.get('model')!r} does not exist", "invalid_request_error", "model_not_found"))
            return "404"
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
            messages = {"429": ("Rate limit reached", "rate_limit_exceeded"), "500": ("The server had an error", "server_error"),
                        "503": ("The engine is currently overloaded", "server_error")}
            text, kind = messages[name]
            self._send(int(name), _error(text, kind), headers={"Retry-After": arg} if arg else None)
            return name
        if name in ("400", "401", "404"):
            self._send(int(name), _error(f"scripted {name}", "invalid_request_error"))
            return name
        if name == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"message": {"content": "trunc')
            return "malformed"
        if name == "html":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
            self._send_raw(200, page, content_type="text/html")
            return "html"
        payload = completion(request, reply)
        if name in ("wrongjson", "nochoices", "nomessage"):
            wrong = {"wrongjson": {"status": "error", "detail": "upstream connect error"},
                     "nochoices": {**payload, "choices": []},
                     "nomessage": {**payload, "choices": [{"index": 0, "finish_reason": "stop"}]}}[name]
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

    def _send_raw(self, status: int, data: bytes, headers: dict | None = None, length: int | None = None,
                  content_type: str = "application/json") -> None:
        """Status line, headers and body in one write (no Nagle/delayed-ACK stalls)."""
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(data) if length is None else length}", "x-request-id: req-fake"]
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
        for stop in ([request["stop"]] if isinstance(request.get("stop"), str) else request.get("stop") or []):
            if stop and stop in content:
                content = content[: content.index(stop)]
        limit = request.get("max_tokens") or request.get("max_completion_tokens")
        words = content.split(" ")
        if limit and len(words) > limit:
            content, finish = " ".join(words[:limit]), "length"
    prompt_tokens = sum(_ntokens(m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content")))
                        for m in request.get("messages") or [] if isinstance(m, dict))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _ntokens(content or ""), **(reply.get("usage") or {})}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    message = {"role": "assistant", "content": content, "refusal": reply.get("refusal")}
    choice = {"index": 0, "message": message, "finish_reason": finish or "stop", "logprobs": None}
    if request.get("logprobs"):
        choice["logprobs"] = {"content": reply.get("logprobs") or _logprobs(content or "", request.get("top_logprobs") or 0)}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": request.get("model", "fake-model"),
            "choices": [choice], "usage": usage}


def _logprobs(content: str, top: int) -> list[dict]:
    out = []
    for i, word in enumerate(content.split(" ")):
        lp = -0.1 * (i % 5)
        alts = [{"token": word, "logprob": lp, "bytes": None}] + [{"token": f"alt{j}", "logprob": lp - j - 1, "bytes": None} for j in range(top - 1)]
        out.append({"token": word, "logprob": lp, "bytes": None, "top_logprobs": alts[:top]})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--fault", action="append", default=[], metavar="ACTION=RATE", help="e.g. 429:1=0.1 or reset=0.05")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--no-bodies", action="store_true", help="do not keep request bodies (long benchmarks)")
    args = parser.parse_args(argv)
    rates = {}
    for item in args.fault:
        action, _, rate = item.rpartition("=")
        rates[action] = float(rate)
    server = OpenAIServer(args.port, latency=args.latency, fault_rates=rates, seed=args.seed, hang_s=args.hang_s,
                          keep_bodies=not args.no_bodies)
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
