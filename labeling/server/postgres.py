"""Start the embedded PostgreSQL of a labeling home and print its URL and pid as JSON.

Runs with the server venv's python, where `pgserver` (PostgreSQL 16 binaries on PyPI) is installed:

    python labeling/server/postgres.py HOME/postgres

The database outlives this process; `prefab labeling down` stops it by pid. As root, pgserver runs it
as a system user of its own (PostgreSQL refuses root) and opens the parent folders to that user.
"""

import json
import sys
import time
from pathlib import Path

import pgserver
import psutil


def clear_unreaped_postmaster(pgdata: Path, timeout: float = 30) -> None:
    """A killed postmaster that its parent (here PID 1, as pg_ctl leaves it) has not reaped yet is a zombie,
    which pgserver 0.1.4 (psutil's is_running) and PostgreSQL's own lock file check (kill 0) both take for
    a running server. Wait for it to be reaped; if it never is, its pid file is stale once no process of it
    (a backend, whose working folder is the data folder) is left."""
    pid_file = pgdata / "postmaster.pid"

    def zombie() -> bool:
        try:
            return psutil.Process(int(pid_file.read_text().split()[0])).status() == psutil.STATUS_ZOMBIE
        except (FileNotFoundError, ValueError, IndexError, psutil.NoSuchProcess):
            return False

    deadline = time.monotonic() + timeout
    while zombie() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not zombie():
        return

    def backend_left() -> bool:
        for proc in psutil.process_iter():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and Path(proc.cwd()) == pgdata:
                    return True
            except (psutil.Error, OSError):
                continue
        return False

    while backend_left():
        time.sleep(0.1)
    pid_file.unlink()


def main(pgdata: str) -> None:
    clear_unreaped_postmaster(Path(pgdata).resolve())
    server = pgserver.get_server(Path(pgdata), cleanup_mode=None)
    if "argilla" not in server.psql("SELECT datname FROM pg_database;").split():
        server.psql("CREATE DATABASE argilla;")
    print(json.dumps({"url": server.get_uri("argilla"), "pid": server.get_pid()}))


if __name__ == "__main__":
    main(sys.argv[1])
