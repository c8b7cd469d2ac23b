"""The Argilla server dies during push and during pull: a clear error, and after a restart the same
commands complete with no duplicate record and no lost label."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
from labeling_fixtures import free_port, server_pids, stored
from labeling_runs import make_run

pytestmark = [pytest.mark.server, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
N_PAIRS = 1000


@pytest.fixture
def own_server(monkeypatch):
    """A server of this test's own: it gets killed, so it must not be the session's."""
    from labeling.launcher import lifecycle

    home = Path(tempfile.mkdtemp(prefix="prefab-faults-"))
    monkeypatch.setenv("PREFAB_LABELING_HOME", str(home))
    monkeypatch.delenv("ARGILLA_API_URL", raising=False)
    lifecycle.up(home, port=free_port())
    yield home
    lifecycle.down(home)
    shutil.rmtree(home, ignore_errors=True)


def prefab_process(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.commands.cli", *map(str, args)],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_server(home: Path) -> None:
    for pid in server_pids(home):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server_pids(home) and time.monotonic() < deadline:
        time.sleep(0.05)


def connected(pid: int, home: Path) -> bool:
    """Whether process pid holds a connection to the server of this home (it is talking to it)."""
    port = int(json.loads((home / "server.json").read_text())["url"].rsplit(":", 1)[1].split("/")[0])
    try:
        return any(
            c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
            for c in psutil.Process(pid).net_connections(kind="tcp")
        )
    except psutil.NoSuchProcess:
        return False


def record_ids(client, name: str) -> list[str]:
    return [r.id for r in client.datasets(name, workspace="prefab").records]


def pushed(client, name: str) -> int:
    """Records of the dataset on the running server (0 before it exists)."""
    found = [d for d in client.http_client.get("/api/v1/me/datasets").json()["items"] if d["name"] == name]
    return client.http_client.get(f"/api/v1/datasets/{found[0]['id']}/progress").json()["total"] if found else 0


def stored_records(home: Path, name: str) -> int:
    """Records of the dataset in the database, read while the server processes are down."""
    return int(
        stored(
            home,
            "SELECT count(*) FROM records JOIN datasets ON datasets.id = records.dataset_id "
            f"WHERE datasets.name = '{name}'",
        )
    )


def test_server_dies_during_push_and_pull(own_server, tmp_path):
    from argilla._models import UserResponseModel

    from labeling.launcher import accounts, lifecycle

    run, _ = make_run(tmp_path / "faulty", N_PAIRS, human_every=1)
    push = prefab_process("push", "--run", run.path)
    client = accounts.client(own_server)
    while pushed(client, "faulty") == 0:  # kill it once the first batch is in, with more to go
        assert push.poll() is None, push.stdout.read()
        time.sleep(0.05)
    kill_server(own_server)
    assert 0 < stored_records(own_server, "faulty") < N_PAIRS
    out, _ = push.communicate(timeout=300)
    assert push.returncode == 4, out
    assert "Argilla" in out and "prefab labeling" in out and "Traceback" not in out

    lifecycle.up(own_server)
    out, _ = prefab_process("push", "--run", run.path).communicate(timeout=600)
    client = accounts.client(own_server)
    ids = record_ids(client, "faulty")
    assert len(ids) == len(set(ids)) == N_PAIRS, out  # no duplicate, none missing
    assert set(ids) == set(run.read("pairs")["pair_id"])

    records = sorted(client.datasets("faulty", workspace="prefab").records, key=lambda r: r.id)[:40]
    for record in records:
        client.api.records.create_record_response(
            record._server_id,
            UserResponseModel(values={"preference": {"value": "a"}}, status="submitted", user_id=client.me.id),
        )
    pull = prefab_process("pull", "--run", run.path)
    while not connected(pull.pid, own_server):  # kill it once the pull is talking to it, with 1000 records to read
        assert pull.poll() is None, pull.stdout.read()
        time.sleep(0.02)
    kill_server(own_server)
    out, _ = pull.communicate(timeout=300)
    assert pull.returncode == 4, out
    assert "Argilla" in out and "prefab labeling" in out and "Traceback" not in out
    if run.has("labels"):
        pl.read_parquet(run.table_path("labels"))  # whatever is there is whole

    lifecycle.up(own_server)
    out, _ = prefab_process("pull", "--run", run.path).communicate(timeout=300)
    labels = run.read("labels")
    assert labels.height == 40 and labels["pair_id"].n_unique() == 40, out
    assert set(labels["pair_id"]) == {r.id for r in records}
