"""pipeline.models.llm's interface, whatever the backend: typed requests and results, the call cache around any backend
(keys and rows of earlier runs still hit), the registry of backends, and the settings each backend owns.
Answers come from the in-process fake backend (tests/fake_backend.py): nothing here needs a server or a model."""

import sqlite3
from importlib.metadata import EntryPoint

import pytest
from pydantic import ValidationError

from pipeline.core import registry
from pipeline.core.cache import CallCache
from pipeline.core.config import GeneratorSpec, ModelSpec, load_config
from pipeline.core.errors import ConfigError
from pipeline.models.backends import Request
from pipeline.models.llm import cache_key, call_llm, check_spec

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo — 1?"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "v", "strict": True, "schema": {"type": "object"}}}
X = [{"role": "user", "content": "x"}]


@pytest.fixture
def cache(tmp_path):
    c = CallCache(tmp_path / "cache.sqlite")
    yield c
    c.close()


# keys computed by the code before typed requests (dict requests through normalize_request): the same request must
# keep its key, or every existing run's cache would miss and its calls be paid again
OLD_KEYS = [
    (
        "openai",
        "gpt-x",
        Request(CHAT, temperature=0.7, top_p=1.0, max_tokens=64, seed=3, stop=None),
        "cd5066ee23f6c8499bd6c8e51a82a18b7dd2dda52029491bbaa360b63eb25668",
    ),
    (
        "openai",
        "gpt-x",
        Request(
            X, temperature=0.0, max_tokens=1, seed=0, stop="\n", logprobs=True, top_logprobs=20, response_format=SCHEMA
        ),
        "943772b4688126985fa5a3778e9677c79005c618814e922c9f0c56a449c49552",
    ),
    (
        "openai",
        "gpt-x",
        Request(X, temperature=1, stop=[], logprobs=False, seed=None, top_logprobs=0),
        "b5c04c35a60926bb2380abea16efd848e8ba69148b7e3f39e4ef7802e01db770",
    ),
    (
        "transformers",
        "embedded:smollm2",
        Request(CHAT, temperature=0.7, top_p=1.0, max_tokens=64, seed=3),
        "f1cae4fe33d3341121117b8be5401d63604cd9dd2cbba8826f8cad15119003c6",
    ),
    (
        "transformers",
        "embedded:smollm2",
        Request(
            X,
            temperature=0.0,
            max_tokens=1,
            seed=0,
            stop=["\n"],
            logprobs=True,
            top_logprobs=20,
            response_format=SCHEMA,
        ),
        "85528af5c67b03cf96f6b14292282c312bc53902db04d368b3cfd88f476396cc",
    ),
    (
        "transformers",
        "embedded:smollm2",
        Request(X, temperature=1, stop=[], logprobs=False, seed=None, top_logprobs=0),
        "4f4cb00c3c0dc5eb15176f0f6b662cd8edd74f659d508b523970d7f4dcb1a783",
    ),
]


@pytest.mark.parametrize("backend, model, request_, key", OLD_KEYS)
def test_a_request_keeps_the_cache_key_it_had_as_a_dict(backend, model, request_, key):
    spec = ModelSpec(
        backend=backend, model=model, **({"base_url": "http://127.0.0.1:1/v1"} if backend == "openai" else {})
    )
    assert cache_key(spec, request_) == key


def test_requests_are_typed():
    assert Request(X, stop="\n").stop == ["\n"]
    assert Request(X, logprobs=False, stop=[], seed=0).payload() == {"messages": X, "seed": 0}
    with pytest.raises(TypeError, match="temprature"):
        Request(X, temprature=1)


def test_rows_cached_before_typed_results_are_read(fake_backend, cache):
    """A run cache written by the code before typed results answers without a call, logprobs included."""
    spec = ModelSpec(backend="fake", model="fake-model")
    plain, judged = Request(X, temperature=0.7, seed=1), Request(X, max_tokens=1, logprobs=True, top_logprobs=2)
    tokens = [
        {
            "token": "4",
            "logprob": -0.1,
            "top_logprobs": [{"token": "4", "logprob": -0.1}, {"token": "5", "logprob": -2.4}],
        }
    ]
    old_rows = [
        (
            plain,
            {
                "text": "an answer",
                "finish_reason": "stop",
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "latency_s": 0.5,
            },
        ),
        (
            judged,
            {
                "text": "4",
                "finish_reason": "length",
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "latency_s": 0.1,
                "logprobs": tokens,
            },
        ),
    ]
    for request, row in old_rows:
        cache.put(cache_key(spec, request), request.payload(), row, "fake")
    first, second = call_llm(spec, [plain, judged], cache, "t")
    assert fake_backend.requests == []
    assert (first.text, first.finish_reason, first.completion_tokens, first.logprobs, first.error, first.cached) == (
        "an answer",
        "stop",
        2,
        None,
        None,
        True,
    )
    assert second.text == "4" and second.logprobs == tokens and second.cached


def test_each_answer_is_committed_before_the_next_call_and_repeats_are_asked_once(fake_backend, cache):
    """The cache wraps any backend: a finished call is on disk (seen from another connection, as a restarted run
    would) before the backend starts the next one; identical requests are asked once and share the answer."""
    on_disk = []

    def respond(body):
        with sqlite3.connect(cache.path) as db:
            on_disk.append(db.execute("SELECT count(*) FROM calls").fetchone()[0])
        return f"answer to {body['messages'][-1]['content']}"

    fake_backend.respond = respond
    spec = ModelSpec(backend="fake", model="fake-model")
    requests = [Request([{"role": "user", "content": f"q{i % 5}"}]) for i in range(10)]
    results = call_llm(spec, requests, cache, "t")
    assert on_disk == [0, 1, 2, 3, 4] and len(fake_backend.requests) == 5
    assert [r.text for r in results] == [f"answer to q{i % 5}" for i in range(10)] and not any(
        r.cached for r in results
    )
    assert all(r.cached for r in call_llm(spec, requests, cache, "t")) and len(fake_backend.requests) == 5


def test_an_unknown_backend_names_the_known_ones(fake_backend, tmp_path):
    with pytest.raises(ValidationError, match=r"unknown backend 'nope'.*known backends: fake, openai, transformers"):
        ModelSpec(backend="nope")
    gone = ModelSpec(backend="fake").model_copy(update={"backend": "gone"})  # registered when built, not any more
    with pytest.raises(ConfigError, match="unknown backend 'gone'"):
        check_spec(gone)
    with pytest.raises(ConfigError, match="unknown backend 'gone'"):
        call_llm(gone, [Request(X)], CallCache(tmp_path / "c.sqlite"), "t")


def test_a_backend_from_an_entry_point_answers(monkeypatch, cache):
    """What another package registers under `prefab.backends` (here the fake,
    as an installed entry point would name it)."""
    monkeypatch.setattr(
        registry,
        "entry_points",
        lambda group: [EntryPoint("echo", "fake_backend:echo", group)] if group == "prefab.backends" else [],
    )
    registry._entry_point_backends.cache_clear()
    try:
        [result] = call_llm(ModelSpec(backend="echo", model="m"), [Request(X, seed=4)], cache, "t")
        assert result.text.startswith("Answer (t=None, seed=4)") and result.error is None
    finally:
        registry._entry_point_backends.cache_clear()


CONFIG = (
    "run: {run}\ningest:\n  paths: [x.jsonl]\n"
    "generate:\n  generators:\n    - name: g\n      backend: {backend}\n{extra}"
)


@pytest.mark.parametrize(
    "backend, extra, field, owner",
    [
        ("transformers", "      concurrency: 64\n", "concurrency", "openai"),
        ("transformers", "      base_url: http://127.0.0.1:8000/v1\n", "base_url", "openai"),
        ("openai", "      model: gpt-x\n      batch_size: 32\n", "batch_size", "transformers"),
        ("openai", "      model: gpt-x\n      device: cuda\n", "device", "transformers"),
    ],
)
def test_a_setting_of_another_backend_is_refused_with_the_line(tmp_path, backend, extra, field, owner):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(run=tmp_path / "run", backend=backend, extra=extra))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "line 6" in str(raised.value) and f"`{field}` is a setting of the {owner} backend" in str(raised.value)
    assert f"set `backend: {owner}`" in str(raised.value)


def test_a_backend_own_settings_and_a_full_snapshot_are_accepted():
    """Every field at its default is no setting at all: the run's manifest stores all of them and is read back."""
    served = GeneratorSpec(
        backend="openai", model="gpt-x", base_url=["http://a/v1", "http://b/v1"], concurrency=64, rpm=600, timeout=5
    )
    local = GeneratorSpec(backend="transformers", batch_size=32, device="cpu")
    for spec in (served, local, ModelSpec()):
        assert type(spec).model_validate(spec.model_dump(mode="json")) == spec


def test_moving_a_model_to_another_backend_drops_the_old_backend_settings():
    served = GeneratorSpec(
        name="g",
        backend="openai",
        model="gpt-x",
        base_url="http://a/v1",
        api_key_env="KEY",
        concurrency=64,
        timeout=5,
        temperatures=[0.3, 1.0],
        n=2,
        price_per_mtok_in=1.0,
    )
    local = served.on_backend("transformers", name="policy", model="/models/round-1")
    assert (local.backend, local.name, local.model, local.temperatures, local.n, local.price_per_mtok_in) == (
        "transformers",
        "policy",
        "/models/round-1",
        [0.3, 1.0],
        2,
        1.0,
    )
    assert (local.base_url, local.api_key_env, local.concurrency, local.timeout) == (None, None, 16, 60.0)
    with pytest.raises(ValidationError, match="`api_key_env` is a setting of the openai backend"):
        GeneratorSpec.model_validate(
            {**served.model_dump(), "backend": "transformers", "model": "/m"}
        )  # what on_backend avoids
