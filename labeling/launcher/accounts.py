"""Accounts on the Argilla server, by its API so they work on any Argilla: the client, users, workspaces, demo ones."""

import os
import secrets
import warnings
from pathlib import Path

from labeling.launcher import bootstrap, processes
from pipeline.core.errors import LabelingError

DEMO_OWNER = {"username": "argilla", "password": "12345678", "api_key": "argilla.apikey"}
DEMO_ANNOTATORS = [
    ("annotator-1", "annotator-1-demo"),
    ("annotator-2", "annotator-2-demo"),
    ("annotator-3", "annotator-3-demo"),
]


def client(home=None):
    """An `argilla.Argilla` client for the right server: ARGILLA_API_URL/KEY if set, else the embedded owner."""
    import argilla as rg  # start-up: argilla

    if bootstrap.external():
        key = os.environ.get("ARGILLA_API_KEY")
        if not key:
            raise LabelingError(
                "ARGILLA_API_URL is set but ARGILLA_API_KEY is not",
                hint="export ARGILLA_API_KEY=<an owner or admin API key>",
            )
        url = os.environ["ARGILLA_API_URL"]
    else:
        home = Path(home or bootstrap.default_home()).resolve()
        state, owner = processes.read_json(home / "server.json"), processes.read_json(home / "owner.json")
        if not state or not owner:
            raise LabelingError(
                f"no Argilla server has been set up in {home}", hint="run `prefab labeling up` (or set ARGILLA_API_URL)"
            )
        if not processes.running(home, "server"):
            raise LabelingError(f"the Argilla server of {home} is not running", hint="run `prefab labeling up`")
        url, key = state["url"], owner["api_key"]
    try:
        return rg.Argilla(api_url=url, api_key=key)
    except Exception as e:
        raise LabelingError(
            f"cannot reach Argilla at {url}: {e}", hint="check the server (`prefab labeling status`) and the API key"
        ) from e


def _workspace(rg_client, name: str):
    import argilla as rg  # start-up: argilla

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
    import argilla as rg  # start-up: argilla

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
