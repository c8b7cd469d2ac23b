"""The process entry the launcher (labeling/launcher/) runs with the server venv's python:

    python labeling/server/main.py setup|server|worker

It imports the search engine (which registers itself through `SearchEngine.register`) and then runs
Argilla's own app, migration command or rq worker, unmodified.
"""

import argparse
import asyncio
import os
import socket
import sys

import uvicorn
from argilla_server.database import sync_engine
from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
from argilla_server.settings import settings
from rq import Worker
from search.engine import ENGINE_NAME  # labeling/server/search/: importing it registers the engine

EXTRA_INDEXES = [  # the queue walks (dataset, status, id) in id order; counts read indexes only
    "CREATE INDEX IF NOT EXISTS prefab_records_queue ON records (dataset_id, status, id)",
    "CREATE INDEX IF NOT EXISTS prefab_records_dataset_id ON records (dataset_id, id)",
    "CREATE INDEX IF NOT EXISTS prefab_records_dataset_inserted ON records (dataset_id, inserted_at)",
    "CREATE INDEX IF NOT EXISTS prefab_responses_user_record ON responses (user_id, record_id, status)",
]


def prepare() -> None:
    """After Argilla's migrations: indexes our queries use, and WAL so reads never wait on writes (SQLite)."""
    with sync_engine.begin() as conn:
        if sync_engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        for statement in EXTRA_INDEXES:
            conn.exec_driver_sql(statement)


def setup() -> None:
    """One process for what `labeling up` needs before starting (importing argilla_server takes seconds):
    Argilla's own migration command, our indexes, and the owner account when PREFAB_OWNER_* are set."""
    from argilla_server.cli.database.migrate import migrate_db  # start-up: argilla_server.cli

    migrate_db(revision="head")
    prepare()
    if os.environ.get("PREFAB_OWNER_USERNAME"):
        from argilla_server.cli.database.users.create import _create  # start-up: argilla_server.cli

        asyncio.run(
            _create(
                first_name="Owner",
                username=os.environ["PREFAB_OWNER_USERNAME"],
                role="owner",
                password=os.environ["PREFAB_OWNER_PASSWORD"],
                api_key=os.environ["PREFAB_OWNER_API_KEY"],
            )
        )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="main.py", description="Run Argilla with the prefab-sql search engine registered."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=6900)
    server.add_argument("--no-access-log", action="store_true")
    server.add_argument("--tag", help="ignored; marks the process as started for one labeling home")
    worker = sub.add_parser("worker")
    worker.add_argument("--tag", help="ignored; marks the process as started for one labeling home")
    sub.add_parser("prepare")
    sub.add_parser("setup")
    args = parser.parse_args(argv)

    if settings.search_engine != ENGINE_NAME:
        raise SystemExit(f"ARGILLA_SEARCH_ENGINE must be {ENGINE_NAME!r} (got {settings.search_engine!r})")
    if args.command == "prepare":
        prepare()
    elif args.command == "setup":
        setup()
    elif args.command == "server":
        # SO_REUSEPORT: several server processes (one per core, on PostgreSQL) share the port
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((args.host, args.port))
        uvicorn.Server(
            uvicorn.Config("argilla_server:app", host=args.host, port=args.port, access_log=not args.no_access_log)
        ).run(sockets=[sock])
    else:
        Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION).work(with_scheduler=False)


if __name__ == "__main__":
    main(sys.argv[1:])
