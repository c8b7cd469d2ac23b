"""What a model backend is: typed requests and results, and the small protocol a backend implements.

The shape of llm's Model or httpx's transport: a backend answers requests and says when each is done;
pipeline.models.llm wraps the call cache around any of them, and pipeline.core.registry finds them by name. The
built-in backends are pipeline/models/openai_api/ and pipeline/models/llm_transformers.py; another package adds
one under the entry point group `prefab.backends`, and tests register an in-process fake
(tests/fake_backend.py) the same way.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

DEFAULT_MAX_TOKENS = 512  # what a request without max_tokens may take (transformers generation, tpm estimates)
CHARS_PER_TOKEN = 4  # English text in the common BPE vocabularies; the estimate where no tokenizer is at hand


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens without the model's tokenizer: ~4 characters a token, plus a few for each message's role
    markers."""
    chars = sum(len(c) if isinstance(c := m.get("content") or "", str) else len(json.dumps(c)) for m in messages)
    return chars // CHARS_PER_TOKEN + 4 * len(messages) + 1


def most_prompt_tokens(messages: list[dict]) -> int:
    """An upper bound: a byte-level BPE token holds at least one byte (budgets are checked against this)."""
    size = sum(len((c if isinstance(c := m.get("content") or "", str) else json.dumps(c)).encode()) for m in messages)
    return size + 8 * len(messages) + 8


@dataclass(frozen=True)
class Request:
    """One chat completion to ask for: exactly the fields that change an answer, so they also key the cache."""

    messages: list[dict]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None  # a single string is taken as a list of one
    response_format: dict | None = None  # an OpenAI `json_schema` response format
    logprobs: bool = False
    top_logprobs: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", [self.stop])

    def payload(self) -> dict:
        """The fields that are set, as an OpenAI-compatible API takes them; empty values and logprobs=False are
        left out, so equal requests get equal cache keys (the same keys as the dict requests before them).
        Made once: the cache key, the cache row and the API body all read it (do not change the dict)."""
        made = self.__dict__.get("_payload")
        if made is None:
            made = {name: value for name in _REQUEST_FIELDS if (value := getattr(self, name)) not in (None, [], "")}
            if made.get("logprobs") is False:
                del made["logprobs"]
            object.__setattr__(self, "_payload", made)  # frozen: the fields cannot change, so neither can this
        return made


_REQUEST_FIELDS = tuple(f.name for f in fields(Request))


CACHED_FIELDS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s")


@dataclass(frozen=True)
class Result:
    """One call's answer, or the reason there is none (`error`); never an exception, so one bad call stops nothing."""

    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    logprobs: list[dict] | None = None  # when asked: [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]
    error: str | None = None  # None on success; failures are not cached, so a later run asks again
    cached: bool = False  # came from the run's call cache

    def cache_row(self) -> dict:
        """What the call cache stores of a success (the row shape of every earlier run's cache)."""
        row = {k: getattr(self, k) for k in CACHED_FIELDS}
        if self.logprobs is not None:
            row["logprobs"] = self.logprobs
        return row

    @classmethod
    def from_cache(cls, row: dict) -> "Result":
        return cls(**{k: row.get(k) for k in CACHED_FIELDS}, logprobs=row.get("logprobs"), cached=True)


class Backend(Protocol):
    """What pipeline.models.llm needs of a backend. `spec` is the pipeline.core.config.ModelSpec of the model asked."""

    fields: frozenset[str]  # ModelSpec fields only this backend reads: a model on another backend may not set them
    json_schema: bool  # honours `response_format`, so judges send their answer's JSON schema
    top_logprobs: int  # the most alternatives per token it returns (logprob judges look this deep)

    def check(self, spec) -> None:
        """Raise ConfigError/ModelError for what would fail every call (no API key, no model), before any work."""

    def run(self, spec, requests: list[Request], finish: Callable[[int, Result], None]) -> None:
        """Answer requests[i] by calling finish(i, result) the moment each ends (it is committed to the cache then,
        so a killed run repays only calls in flight). A failed call is a Result with its error; raise only
        for what stops every call (a rejected key, a model that does not exist).

        A backend whose work outlives the process (a provider's batch job, answered hours later) sets the class
        attribute `journal = True`: call_llm then also passes `journal=` the run's CallCache, whose add_batch,
        open_batches and close_batch record what was submitted, so a restarted run collects it instead of
        paying again. Backends without the attribute are called as above."""
