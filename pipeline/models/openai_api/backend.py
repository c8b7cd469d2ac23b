"""The openai backend: any OpenAI-compatible server (OpenAI, vLLM, TGI, Ollama, llama.cpp server, any base_url),
called in realtime (realtime.py) or through the provider's Batch API with `mode: batch` (batch.py)."""

import asyncio
import concurrent.futures
import os

from pipeline.core.errors import ConfigError
from pipeline.models.backends import Request
from pipeline.models.openai_api.batch import run_batches
from pipeline.models.openai_api.realtime import call_all


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
        key = api_key(spec)
        if spec.mode == "batch":
            run_batches(spec, key, requests, finish, journal)
        else:
            _run_async(call_all(spec, key, requests, finish))


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


backend = OpenAIBackend()  # registered under the prefab.backends entry point (pyproject.toml)
