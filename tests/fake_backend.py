"""An in-process model backend for tests where the HTTP layer is not what they test: registered through the
same interface as openai and transformers (pipeline.core.registry.register_backend; the `fake_backend` fixture
in conftest.py registers a fresh one as `fake`), it answers as tests/openai_server.py does, without a
server or sockets:

    fake.respond = lambda body: "text" or {"content": ..., "logprobs": [...], "finish_reason": ...}
    ModelSpec(backend="fake", model="fake-model")

`respond` gets the JSON body an OpenAI-compatible server would get (model and the request's fields), and
max_tokens, stop and token counts apply as on the server (openai_server.completion). `requests` records
what was asked, in order.
"""

from openai_server import completion, default_respond

from pipeline.models.backends import Request, Result


class FakeBackend:
    fields = frozenset()  # no settings of its own: a `backend: fake` model may set none of another backend's
    json_schema = True
    top_logprobs = 20

    def __init__(self, respond=default_respond):
        self.respond = respond
        self.requests: list[Request] = []

    def check(self, spec) -> None:
        pass

    def run(self, spec, requests: list[Request], finish) -> None:
        for j, request in enumerate(requests):
            self.requests.append(request)
            body = {"model": spec.model, **request.payload()}
            answer = completion(body, self.respond(body))
            choice, usage = answer["choices"][0], answer["usage"]
            logprobs = None
            if request.logprobs:
                logprobs = [
                    {
                        "token": t["token"],
                        "logprob": t["logprob"],
                        "top_logprobs": [
                            {"token": a["token"], "logprob": a["logprob"]} for a in t.get("top_logprobs") or []
                        ],
                    }
                    for t in choice["logprobs"]["content"]
                ]
            finish(
                j,
                Result(
                    choice["message"]["content"],
                    finish_reason=choice["finish_reason"],
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    latency_s=0.0,
                    logprobs=logprobs,
                ),
            )


echo = FakeBackend()  # one an entry point can name (tests/test_llm.py loads it as one)
