"""`prefab push` and `prefab pull`: pairs to Argilla, labels back."""

import click

from pipeline.core.errors import ConfigError
from pipeline.core.options import config_option, load_run_config, run_option, stage_command


def _with_labeling(config, **overrides):
    """The run config with CLI overrides of its labeling section, validated like the YAML."""
    from pydantic import ValidationError  # start-up: pydantic

    from labeling.settings import LabelingConfig  # start-up: pydantic, yaml

    base = (config.labeling or LabelingConfig()).model_dump()
    try:
        config.labeling = LabelingConfig.model_validate(
            {**base, **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ValidationError as e:
        raise ConfigError(f"invalid option: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None
    return config


@click.command()
@run_option
@config_option
@click.option(
    "--route",
    "routes",
    multiple=True,
    type=click.Choice(["human", "auto"]),
    help="Push pairs of this route (repeatable; default from the config: human).",
)
@click.option("--dataset", help="Argilla dataset name (default: the run directory's name).")
@click.option("--workspace", help="Argilla workspace (default: prefab).")
@click.option(
    "--judge-hint",
    type=click.Choice(["none", "shown", "prefilled"]),
    help="What annotators see of the judge: nothing (default), its verdict as a note, or its verdict pre-selected.",
)
@click.option("--no-suggestions", is_flag=True, help="Same as --judge-hint none.")
@click.option(
    "--gold-share",
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of the dataset that is gold pairs from calibrate, unmarked (default from the config: 0.1).",
)
def push(run_dir, config_path, routes, dataset, workspace, judge_hint, no_suggestions, gold_share):
    """Push the pairs routed to humans (and unmarked gold pairs) to Argilla; pushing again updates the same records."""
    from pipeline.core.store import Run  # start-up: polars

    config = _with_labeling(
        load_run_config(run_dir, config_path),
        routes=list(routes) or None,
        dataset=dataset,
        workspace=workspace,
        judge_hint="none" if no_suggestions else judge_hint,
        gold_share=gold_share,
    )
    stage_command("push", config, Run(run_dir))


@click.command()
@run_option
@config_option
@click.option("--watch", is_flag=True, help="Keep pulling as labels arrive; Ctrl-C stops.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds between pulls with --watch.",
)
def pull(run_dir, config_path, watch, interval):
    """Pull submitted and discarded labels from Argilla, mapped back to chosen/rejected, and resolve them."""
    import labeling.pull  # start-up: httpx, numpy, polars, pydantic, rich.console, rich.progress, rich.table, yaml
    import labeling.push  # start-up: httpx, numpy, polars, pydantic, rich.console, rich.progress, rich.table, yaml
    from pipeline.core.progress import console  # start-up: rich.console, rich.progress, rich.table
    from pipeline.core.store import open_run  # start-up: polars

    run = open_run(run_dir)
    config = load_run_config(run_dir, config_path)
    client = labeling.push.connect(run)
    if not watch:
        labeling.pull.print_summary(labeling.pull.pull_stage(run, config, client))
        return
    console.print(f"pulling every {interval:g}s; Ctrl-C stops")
    try:
        labeling.pull.watch(run, config, client, interval)
    except KeyboardInterrupt:  # a second Ctrl-C, in the middle of a pull; tables are replaced atomically
        pass
    console.print("stopped; every label pulled so far is saved")


commands = [push, pull]
