"""`prefab labeling up/down/status/logs/users` on the real embedded server: it answers on loopback only,
serves the UI, keeps its secrets private, and loses no submitted response across down/up or kill -9."""

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest
from labeling_fixtures import answer, login, make_user, pref_dataset, unique

from labeling.launcher import accounts, lifecycle
from pipeline.core.errors import LabelingError

pytestmark = pytest.mark.server


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_up_runs_healthy_on_embedded_postgresql_on_loopback_only(labeling_server, prefab):
    info = lifecycle.status(labeling_server["home"])
    assert info["healthy"] and all(info["pids"].values()), info
    assert set(info["pids"]) >= {"postgres", "redis", "worker", "server"}
    assert info["database"] == f"postgresql (embedded, {labeling_server['home'] / 'postgres'})"
    shown = prefab("labeling", "status")
    assert f"database postgresql (embedded, {labeling_server['home'] / 'postgres'})" in shown.output, shown.output
    assert info["url"] == f"http://127.0.0.1:{labeling_server['port']}"
    assert listening_addresses(labeling_server["port"]) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
    status = httpx.get(info["url"] + "/api/v1/status", headers={"X-Argilla-Api-Key": labeling_server["api_key"]}).json()
    assert status["search_engine"]["engine"] == "prefab-sql" and status["search_engine"]["database"] == "postgresql"


def test_ui_loads_over_http(labeling_server):
    page = httpx.get(labeling_server["url"] + "/", follow_redirects=True)
    assert page.status_code == 200 and "<title>Argilla</title>" in page.text
    scripts = re.findall(r'src="(/_nuxt/[^"]+\.js)"', page.text)
    assert scripts and all(httpx.get(labeling_server["url"] + s).status_code == 200 for s in scripts)
    assert httpx.get(labeling_server["url"] + "/sign-in").status_code == 200  # client-side routes too


def test_owner_credentials_are_random_private_and_work(labeling_server):
    home = labeling_server["home"]
    for name in ("owner.json", "secret.key", "server.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    owner = json.loads((home / "owner.json").read_text())
    assert owner["password"] != accounts.DEMO_OWNER["password"] and len(owner["api_key"]) > 30
    me = httpx.get(labeling_server["url"] + "/api/v1/me", headers={"X-Argilla-Api-Key": owner["api_key"]})
    assert me.status_code == 200 and me.json()["role"] == "owner"
    assert httpx.get(labeling_server["url"] + "/api/v1/me", headers={"X-Argilla-Api-Key": "nope"}).status_code == 401
    assert owner["password"] not in (home / "logs" / "setup.log").read_text()


def submit(http, record_id: str, label: str) -> None:
    response = answer(http, record_id, label)
    assert response.status_code == 201, response.text


def submitted_labels(argilla_client, dataset) -> dict:
    """external id -> submitted `pref` value, read back through the SDK."""
    fresh = argilla_client.datasets(dataset.name, workspace=dataset.workspace.name)
    return {
        record.id: response.value
        for record in fresh.records(with_responses=True)
        for response in record.responses
        if response.question_name == "pref" and getattr(response.status, "value", response.status) == "submitted"
    }


def test_restart_and_kill_9_lose_no_submitted_response(labeling_server, argilla_client):
    home = labeling_server["home"]
    workspace = unique("ws-restart")
    annotator, password = make_user(argilla_client, workspace)
    dataset, ids = pref_dataset(argilla_client, workspace, 4)
    http = login(labeling_server, annotator.username, password)
    try:
        submit(http, ids["r0"], "a")
        servers = [name for name in lifecycle.status(home)["pids"] if name.startswith("server")]
        assert servers[0] == "server" and len(servers) == lifecycle.default_servers()
        stopped = lifecycle.down(home)
        assert stopped == [*reversed(servers), "worker", "redis", "postgres"] and not lifecycle.status(home)["healthy"]
        assert not any(lifecycle.status(home)["pids"].values())
        (home / "tmp" / "tmpleftover" / "statics").mkdir(parents=True)  # as a process that shared tmp/ left it
        lifecycle.up(home)
        assert submitted_labels(argilla_client, dataset) == {"r0": "a"}
        submit(http, ids["r1"], "b")  # the bearer token outlives the restart (persistent secret key)

        before = lifecycle.status(home)["pids"]
        killed = [*servers, "postgres"]
        for name in killed:  # every server process and the database die at once, mid-session
            os.kill(before[name], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(lifecycle.status(home)["pids"][name] for name in killed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(lifecycle.status(home)["pids"][name] for name in killed)
        after = lifecycle.up(home)["pids"]
        assert all(after[name] and after[name] != before[name] for name in killed)
        assert (after["worker"], after["redis"]) == (before["worker"], before["redis"])
        assert submitted_labels(argilla_client, dataset) == {"r0": "a", "r1": "b"}
        # each process's TMPDIR is emptied when it starts: the UI statics of killed ones do not pile up
        assert {p.name for p in (home / "tmp").iterdir()} <= {"setup", "worker", *servers}
        queue = http.post(
            f"/me/datasets/{dataset.id}/records/search",
            json={
                "filters": {
                    "and": [
                        {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]}
                    ]
                }
            },
        ).json()
        assert sorted(item["record"]["external_id"] for item in queue["items"]) == ["r2", "r3"]
    finally:
        http.close()
        lifecycle.up(home)  # leave the session server running whatever happened


def test_up_refuses_a_busy_port_and_warns_off_loopback(labeling_server, tmp_path):
    assert lifecycle.status(labeling_server["home"])["healthy"]  # the port is really taken
    try:
        with pytest.warns(UserWarning, match="0.0.0.0"), pytest.raises(LabelingError, match="already in use"):
            lifecycle.up(tmp_path / "other", host="0.0.0.0", port=labeling_server["port"])
        assert not (tmp_path / "other" / "run").exists() or not any((tmp_path / "other" / "run").iterdir())
    finally:
        lifecycle.down(tmp_path / "other")  # never leave a server on 0.0.0.0 behind, whatever happened


def test_external_argilla_is_used_when_configured(labeling_server, monkeypatch, tmp_path):
    monkeypatch.setenv("ARGILLA_API_URL", labeling_server["url"])
    monkeypatch.setenv("ARGILLA_API_KEY", labeling_server["api_key"])
    monkeypatch.setenv("PREFAB_LABELING_HOME", str(tmp_path / "unused"))
    assert lifecycle.up() == {"url": labeling_server["url"], "external": True}
    assert lifecycle.status()["healthy"] and lifecycle.down() == []
    assert accounts.client().me.username == "owner"
    assert not (tmp_path / "unused").exists()
    monkeypatch.setenv("ARGILLA_API_KEY", "wrong")
    with pytest.raises(LabelingError):
        accounts.client()


def test_cli_status_logs_and_users(labeling_server, prefab):
    result = prefab("labeling", "status")
    assert result.exit_code == 0 and labeling_server["url"] in result.output and "healthy" in result.output
    assert "Application startup complete" in prefab("labeling", "logs", "-n", "1000").output

    name = unique("cli-user")
    workspace = unique("ws-cli")
    added = prefab("labeling", "users", "add", name, "--role", "annotator", "--workspace", workspace)
    assert added.exit_code == 0, added.output
    password = re.search(r"password: (\S+)", added.output).group(1)
    login(labeling_server, name, password).close()  # the printed password works
    listed = prefab("labeling", "users", "list").output
    assert re.search(rf"{name}\s+annotator\s+{workspace}", listed)
    again = prefab("labeling", "users", "add", name)
    assert again.exit_code != 0 and "already exists" in again.output
    assert prefab("labeling", "users", "remove", name).exit_code == 0
    assert name not in prefab("labeling", "users", "list").output
    with pytest.raises(httpx.HTTPStatusError):
        login(labeling_server, name, password)


def test_a_home_keeps_the_database_it_was_made_with(tmp_path):
    """A home from before PostgreSQL was the default keeps its SQLite (and says so); asking a home for the
    other database is refused instead of starting an empty one beside its labels."""
    old = tmp_path / "old"
    (old / "argilla").mkdir(parents=True)
    (old / "argilla" / "argilla.db").write_bytes(b"")
    with pytest.warns(UserWarning, match="keeps its SQLite database"):
        assert lifecycle.database_kind(old, {}, None, None) == "sqlite"
    with pytest.raises(LabelingError, match="holds its labels in sqlite") as refused:
        lifecycle.database_kind(old, {}, "postgresql", None)
    assert "--home" in refused.value.hint
    assert lifecycle.database_kind(old, {"database": "sqlite"}, "sqlite", None) == "sqlite"
    with pytest.raises(LabelingError, match="holds its labels in postgresql"):
        lifecycle.database_kind(tmp_path / "new", {"database": "postgresql"}, "sqlite", None)
    assert lifecycle.database_kind(tmp_path / "new", {}, None, None) == "postgresql"
    assert lifecycle.database_kind(tmp_path / "new", {}, "sqlite", None) == "sqlite"
    assert lifecycle.database_kind(tmp_path / "new", {}, None, "postgresql://u:p@db/argilla") == "external"
    assert (
        lifecycle.database_name(tmp_path, {"database": "external", "database_url": "postgresql://u:secret@db/argilla"})
        == "postgresql (postgresql://u:***@db/argilla)"
    )
