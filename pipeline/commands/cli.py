"""`prefab`: one CLI for every stage. Each command's docstring is its help."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import click

from pipeline.core import registry
from pipeline.core.errors import ConfigError, PrefabError
from pipeline.core.options import config_option, load_run_config, run_option, stage_command


class PrefabGroup(click.Group):
    """Prints user errors without a traceback and exits non-zero (PREFAB_DEBUG=1 re-raises). The commands
    other packages register (pipeline/core/registry.py) join on first use, after this module is fully imported."""

    plugins_loaded = False

    def _plugins(self) -> None:
        if not self.plugins_loaded:
            self.plugins_loaded = True
            for command in registry.commands():
                self.add_command(command)
            for stage, module in registry.stage_modules().items():  # the stages that bring no command of their own
                if stage not in self.commands:
                    self.add_command(stage_command_for(stage, module))

    def list_commands(self, ctx):
        self._plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._plugins()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PrefabError as e:
            if os.environ.get("PREFAB_DEBUG"):
                raise
            click.secho(f"error: {e}", err=True, fg="red")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.secho(
                "interrupted: finished calls are cached; run the same command again to resume", err=True, fg="yellow"
            )
            ctx.exit(130)


@click.group(cls=PrefabGroup)
@click.version_option(package_name="prefab")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show third-party progress bars and warnings (transformers, datasets, TRL); "
    "else warnings go to RUN/logs/third_party.log.",
)
def cli(verbose):
    """prefab: preference data for LLM post-training, from prompts to a labeled, trained-on dataset."""
    from pipeline.core.progress import (  # start-up: rich.console, rich.progress, rich.table
        progress_interval,
        quiet_third_party,
    )

    progress_interval()  # a bad PREFAB_PROGRESS_INTERVAL fails now, not when the first long step starts
    if not verbose:
        quiet_third_party()


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--from", "start", help="Start at this stage (re-running it).")
@click.option("--until", help="Stop after this stage.")
@click.option("--run", "run_dir", help="Override the run directory of the config.")
@click.option("--force", is_flag=True, help="Re-run stages even when complete (model calls still come from the cache).")
def run(config_path, start, until, run_dir, force):
    """Run the configured stages in order, skipping what is already complete."""
    from pipeline.core.config import load_config  # start-up: pydantic, yaml
    from pipeline.core.runner import (  # start-up: polars, pydantic, rich.console, rich.progress, rich.table, yaml
        run_pipeline,
    )
    from pipeline.core.store import Run  # start-up: polars

    config = load_config(config_path)
    if run_dir:
        config.run = run_dir
    run = Run(config.run)
    ran = run_pipeline(config, run, start=start, until=until, force=force)
    click.echo(f"{run.path}: ran {', '.join(ran) if ran else 'nothing (all stages complete)'}")


@cli.command(name="plan")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--run", "run_dir", help="Override the run directory of the config.")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First make this many calls per generator, and judge them, to measure answer lengths "
    "(cached: the run does not pay again).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(config_path, run_dir, sample, as_json):
    """Estimate a run's calls, tokens and cost per stage and model, and what the call cache already holds, before
    spending."""
    from pipeline.commands.plan import (  # start-up: polars, pydantic, rich.console, rich.progress, rich.table, yaml
        plan_with_cache,
        print_plan,
    )
    from pipeline.core.config import load_config  # start-up: pydantic, yaml

    config = load_config(config_path)
    if run_dir:
        config.run = run_dir
    result = plan_with_cache(config, sample)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_plan(result)


@cli.command(name="check")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
def check_command(config_path):
    """Before spending: ask every model server the config names (key, model, completion, structured output, logprobs,
    Batch API), load its local models and ask the labeling server; exit non-zero with the fix for each problem."""
    from pipeline.commands.check import problems, run_checks, show  # start-up: pipeline.commands.check
    from pipeline.core.config import load_config  # start-up: pydantic, yaml

    rows = run_checks(load_config(config_path))
    show(rows)
    if error := problems(rows):
        raise error


@cli.command()
@run_option
@config_option
@click.argument("paths", nargs=-1)
@click.option("--skip-bad-rows", is_flag=True, help="Record bad rows in bad_rows.parquet and keep going.")
@click.option("--system-prompt", help="System prompt added to prompts that have none.")
@click.option("--prompt-column", help="Column holding a plain-text prompt.")
@click.option("--messages-column", help="Column holding a chat (list of {role, content}).")
@click.option("--answer-column", help="Column holding a reference answer, for the verify stage.")
@click.option("--limit", type=int, help="Keep at most this many prompts.")
def ingest(
    run_dir, config_path, paths, skip_bad_rows, system_prompt, prompt_column, messages_column, answer_column, limit
):
    """Read prompts (JSONL, CSV, Parquet, a saved HF dataset dir, or hf:NAME) into the run."""
    from pipeline.core.config import IngestConfig, config_model  # start-up: pydantic, yaml
    from pipeline.core.store import Run  # start-up: polars

    if config_path or not paths:
        config = load_run_config(run_dir, config_path)
    else:
        config = config_model()(run=run_dir, ingest=IngestConfig(paths=list(paths)))
    overrides = {
        "paths": list(paths) or None,
        "skip_bad_rows": skip_bad_rows or None,
        "system_prompt": system_prompt,
        "prompt_column": prompt_column,
        "messages_column": messages_column,
        "answer_column": answer_column,
        "limit": limit,
    }
    config.ingest = config.ingest.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    stage_command("ingest", config, Run(run_dir))


@cli.command()
@run_option
@config_option
@click.option("--retry-failed", is_flag=True, help="Call again the candidates whose call failed.")
def generate(run_dir, config_path, retry_failed):
    """Generate candidate responses: every generator x temperature x sample."""
    from pipeline.core.store import Run  # start-up: polars

    stage_command("generate", load_run_config(run_dir, config_path), Run(run_dir), retry_failed=retry_failed)


@cli.command()
@run_option
@config_option
@click.option(
    "--gold",
    "gold",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Gold file (TRL preference JSONL/CSV/Parquet: prompt, chosen, rejected); repeat for several.",
)
@click.option("--limit", type=int, help="At most this many gold pairs per file (a seeded sample).")
def calibrate(run_dir, config_path, gold, limit):
    """Measure every configured judge on human-labeled gold pairs: accuracy, consistency, biases, accuracy-coverage
    curves."""
    from pipeline.core.config import CalibrateConfig  # start-up: pydantic, yaml
    from pipeline.core.store import Run  # start-up: polars

    config = load_run_config(run_dir, config_path)
    if gold:
        base = config.calibrate.model_dump() if config.calibrate else {}
        config.calibrate = CalibrateConfig.model_validate(base | {"gold": [str(Path(g).resolve()) for g in gold]})
    if limit:
        if config.calibrate is None:
            raise ConfigError("--limit needs gold pairs", hint="pass --gold FILE")
        config.calibrate = config.calibrate.model_copy(update={"limit": limit})
    stage_command("calibrate", config, Run(run_dir))


def docstring_line(path: str) -> str | None:
    """The first line of a module's docstring where the file opens with one (pydoc.synopsis does this too, but
    importing pydoc alone costs `prefab --help` more than reading the line)."""
    with open(path, encoding="utf-8") as source:
        line = source.readline().strip()
    return line.strip('"').strip() or None if line.startswith('"""') else None


def stage_command_for(stage: str, module: str) -> click.Command:
    """`prefab STAGE --run RUN [--config CONFIG]` for a registered stage with no command of its own. Its help is the
    first line of the stage module's docstring, read from the file without importing the module, so that
    `prefab --help` stays fast; the stage itself is loaded when the command runs."""
    spec = importlib.util.find_spec(module)
    summary = (docstring_line(spec.origin) if spec and spec.origin else None) or f"Run the {stage} stage."

    @click.command(name=stage, help=summary)
    @run_option
    @config_option
    def command(run_dir, config_path):
        from pipeline.core.store import Run  # start-up: polars

        stage_command(stage, load_run_config(run_dir, config_path), Run(run_dir))

    return command


@cli.command()
@run_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest's stage info as JSON.")
def status(run_dir, as_json):
    """Show what each stage of a run holds: status, rows, time."""
    from rich.table import Table  # start-up: rich.table

    from pipeline.core.progress import console  # start-up: rich.console, rich.progress, rich.table
    from pipeline.core.schema import TABLES  # start-up: polars
    from pipeline.core.store import open_run  # start-up: polars

    run = open_run(run_dir)
    stages = run.manifest().get("stages", {})
    if as_json:
        click.echo(json.dumps(stages, indent=2))
        return
    table = Table(title=f"run {run.path}")
    for col in ("stage", "status", "seconds", "counts"):
        table.add_column(col)
    known = list(registry.stages())
    for name in known + [s for s in stages if s not in known]:
        info = stages.get(name)
        if not info:
            continue
        counts = {k: v for k, v in info.items() if isinstance(v, (int, float)) and k != "seconds"}
        table.add_row(
            name,
            info.get("status", "?"),
            str(info.get("seconds", "")),
            ", ".join(f"{k}={v}" for k, v in counts.items()),
        )
    console.print(table)
    tables = Table(title="tables")
    tables.add_column("table")
    tables.add_column("rows", justify="right")
    for name in TABLES:
        if run.has(name):
            tables.add_row(name, f"{run.height(name):,}")
    console.print(tables)
    for section in registry.status_sections():
        shown = section(run)
        if shown is not None:
            console.print(shown)


def main():
    cli(prog_name="prefab")


if __name__ == "__main__":
    sys.exit(main())
