"""What every prefab command is built from, whichever package defines it: the shared options, the run's
config, and running a stage through the runner."""

from pathlib import Path

import click

from pipeline.core.errors import ConfigError

run_option = click.option(
    "--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory, e.g. runs/demo."
)
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Run config (YAML); defaults to the snapshot stored in the run's manifest.",
)


def load_run_config(run_dir: str, config_path: str | None):
    """The config given, or the one the run was made with (its manifest snapshot)."""
    from pipeline.core.config import config_model, load_config  # start-up: pydantic, yaml
    from pipeline.core.store import open_run  # start-up: polars

    if config_path:
        config = load_config(config_path)
        config.run = run_dir
        return config
    run = open_run(run_dir)
    snapshot = run.manifest().get("config")
    if not snapshot:
        raise ConfigError(f"{run.manifest_path} holds no config snapshot", hint="pass --config CONFIG.yaml")
    source = snapshot.pop("source", None)
    config = config_model().model_validate(snapshot)
    config.source = Path(source) if source else None
    return config


def stage_command(stage: str, config, run, **options) -> dict:
    from pipeline.core.runner import (  # start-up: polars, pydantic, rich.console, rich.progress, rich.table, yaml
        run_step,
    )

    return run_step(stage, config, run, **options)
