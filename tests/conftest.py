"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is forced here."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("PREFAB_HOME", str(ROOT / ".prefab"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def prefab(cli_runner):
    """Invoke the real `prefab` CLI in-process; returns the click Result."""
    from pipeline.commands.cli import cli

    def invoke(*args, **kwargs):
        return cli_runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return invoke


def snapshot_dir(path: Path) -> dict:
    """name -> bytes of every file under path: to prove a failed command changed nothing."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def openai_server():
    """A real OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py), fresh per test.

    Script it per test: `server.latency = 0.05`, `server.script("429:1", "ok")`,
    `server.fault_rates = {"500": 0.2}`, `server.respond = lambda request: "text" or {...}`;
    read `server.total`, `server.prompt_counts`, `server.request_counts`, `server.statuses`; base_url is `server.url`.
    """
    from openai_server import OpenAIServer

    server = OpenAIServer().start()
    yield server
    server.stop()


# the real embedded Argilla server, once per session (tests/labeling_fixtures.py)
from labeling_fixtures import argilla_client, argilla_http, labeling_server  # noqa: E402,F401


@pytest.fixture
def fast_backoff(monkeypatch):
    """Pauses of 10 ms between a call's attempts, for tests about what is retried rather than how long it waits."""
    import pipeline.models.openai_api.realtime

    monkeypatch.setattr(pipeline.models.openai_api.realtime, "BACKOFF_S", (0.01, 0.01))


@pytest.fixture
def fake_backend():
    """An in-process backend registered as `fake` (tests/fake_backend.py), fresh per test: a model with
    `backend: fake` answers without a server; script it with `fake_backend.respond`, read `fake_backend.requests`."""
    from fake_backend import FakeBackend

    from pipeline.core.registry import register_backend, unregister_backend

    fake = FakeBackend()
    register_backend("fake", fake)
    yield fake
    unregister_backend("fake")


def pytest_collection_modifyitems(items):
    """A test that uses the embedded Argilla server is a `server` test, marked or not
    (make test-fast leaves them out)."""
    for item in items:
        if "labeling_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


DISK_GB = 7  # the most the suite wrote at once under the temp folder (docs/tests.md)


def pytest_report_header(config):
    """Free space where the tests write, in the header: a full disk fails model saves deep in the run."""
    root = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    free = shutil.disk_usage(root).free / 2**30
    short = f": fewer than the {DISK_GB} GB the suite may write there" if free < DISK_GB else ""
    return f"free under {root}: {free:.1f} GB{short}"
