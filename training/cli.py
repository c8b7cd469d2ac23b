"""`prefab export`, `prefab train`, `prefab eval`, `prefab rounds`: thin commands over training/*.py."""

import os
from contextlib import nullcontext
from pathlib import Path

import click

from pipeline.core.errors import ConfigError
from pipeline.core.options import config_option, load_run_config, run_option, stage_command


@click.command()
@run_option
@config_option
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["trl-dpo", "openai-dpo", "sft", "kto", "grpo"]),
    help="Format(s) to write (repeatable); default: the config's, else trl-dpo, openai-dpo and sft.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(["human", "auto"]),
    help="Pairs to include: human-labeled, automatic (repeatable); default both.",
)
@click.option("--min-margin", type=float, help="Minimum judge margin for automatic pairs.")
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1),
    help="Drop pairs whose label is less likely right than this (aggregated human / calibrated auto confidence).",
)
@click.option(
    "--standard",
    is_flag=True,
    help="Plain-string prompts (rendered with --tokenizer's chat template) instead of message lists.",
)
@click.option("--test-share", type=float, help="Share of prompts held out as the test split (by prompt).")
@click.option("--max-tokens", type=int, help="Drop pairs longer than this (prompt + longer response, in tokens).")
@click.option("--tokenizer", help="Tokenizer for lengths and --standard (default embedded:smollm2).")
@click.option(
    "--ties", type=click.Choice(["drop", "judge"]), help="Human 'tie': drop the pair or keep the judge's order."
)
@click.option(
    "--both-bad",
    type=click.Choice(["drop", "judge"]),
    help="Human 'both bad': drop the pair or keep the judge's order.",
)
@click.option("--drop-equal", is_flag=True, help="Leave out pairs whose two texts are equal instead of failing.")
@click.option("--seed", type=int, help="Seed of the train/test split.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default RUN/exports).")
@click.option(
    "--save-hf",
    type=click.Path(file_okay=False),
    help="Also save each format as a `datasets` dataset under this folder.",
)
@click.option(
    "--push-to-hub", metavar="REPO", help="Also push the dataset to the Hugging Face Hub (needs network and a login)."
)
def export(
    run_dir,
    config_path,
    formats,
    sources,
    min_margin,
    min_confidence,
    standard,
    test_share,
    max_tokens,
    tokenizer,
    ties,
    both_bad,
    drop_equal,
    seed,
    out_dir,
    save_hf,
    push_to_hub,
):
    """Write the run's pairs as TRL DPO, OpenAI DPO, SFT and KTO JSONL, and a GRPO prompt set, split by prompt,
    with a dataset card."""
    import training.export.stage  # start-up: numpy, polars, pydantic, rich.console, rich.progress, rich.table, yaml
    from pipeline.core.config import IngestConfig, config_model  # start-up: pydantic, yaml
    from pipeline.core.store import open_run  # start-up: polars
    from training.settings import ExportConfig  # start-up: pydantic, yaml

    run = open_run(run_dir)
    record = stage_command
    try:
        config = load_run_config(run_dir, config_path)
    except ConfigError:
        if config_path:
            raise
        # a run made without `prefab run` holds no config snapshot: export with defaults, and leave none behind
        config = config_model()(run=run_dir, ingest=IngestConfig(paths=["-"]))

        def record(stage, config, run, **options):
            with run.stage(stage) as info:
                info.update(training.export.stage.step(config, run, **options))
            return info

    overrides = {
        "formats": list(formats) or None,
        "sources": list(sources) or None,
        "min_margin": min_margin,
        "min_confidence": min_confidence,
        "conversational": False if standard else None,
        "test_share": test_share,
        "max_tokens": max_tokens,
        "tokenizer": tokenizer,
        "ties": ties,
        "both_bad": both_bad,
        "drop_equal": drop_equal or None,
        "seed": seed,
        "out_dir": out_dir,
    }
    section = (config.export or ExportConfig()).model_dump()
    section.update({k: v for k, v in overrides.items() if v is not None})
    config.export = ExportConfig.model_validate(section)
    counts = record("export", config, run, save_hf=save_hf, push_to_hub=push_to_hub)
    click.echo(
        f"{counts['exported']} pairs ({counts['train']} train / {counts['test']} test) -> "
        f"{config.export.out_dir or run.path / 'exports'}"
    )


@click.command()
@click.argument("method", type=click.Choice(["dpo", "sft", "kto", "grpo", "reward"]))
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False),
    help="Exported JSONL: dpo_train.jsonl (dpo, reward), sft_train.jsonl or sft_pc_train.jsonl (sft), kto_train.jsonl "
    "(kto), grpo_train.jsonl (grpo).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Training YAML (default training/configs/<method>.yaml).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any TRL config field or prefab key (model, ref_model, lora, eval_data); repeatable.",
)
@click.option("--model", help="Base model (embedded:smollm2, a checkpoint folder, or a hub name).")
@click.option("--output-dir", help="Where the model, checkpoints and metrics.json go.")
@click.option(
    "--eval-data",
    type=click.Path(dir_okay=False),
    help="Held-out JSONL (e.g. dpo_test.jsonl): reward accuracy / eval loss / (grpo) eval reward.",
)
@click.option("--resume", is_flag=True, help="Resume from the newest checkpoint in the output dir.")
def train(method, data, config_path, sets, model, output_dir, eval_data, resume):
    """Train with TRL's DPOTrainer, SFTTrainer, KTOTrainer, GRPOTrainer (the verifier as reward) or RewardTrainer
    (a reward model for judge.reward_models) on an exported JSONL file; metrics.json beside the model."""
    from pipeline.core.progress import stage_lines, summary  # start-up: rich.console, rich.progress, rich.table
    from training.train import parse_sets  # start-up: polars, pydantic, yaml
    from training.train import train as run_training  # start-up: polars, pydantic, yaml

    overrides = parse_sets(list(sets))
    if model:
        overrides["model"] = model
    if output_dir:
        overrides["output_dir"] = output_dir
    first = os.environ.get("RANK", "0") == "0"  # under accelerate/torchrun every process runs this; one prints
    with stage_lines(f"train {method}") if first else nullcontext():
        metrics = run_training(method, data, config_path, overrides, eval_data=eval_data, resume=resume)
    if first:
        summary(
            f"train {method}", {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and v is not None}
        )


@click.command(name="eval")
@click.option("--base", required=True, help="The model before training (embedded:smollm2 or a checkpoint folder).")
@click.option("--candidate", required=True, help="The trained model (a checkpoint folder).")
@click.option(
    "--prompts",
    type=click.Path(dir_okay=False),
    help="Held-out prompts: an export's test split or {prompt}/{messages} JSONL (default with --run: "
    "its dpo_test.jsonl).",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False),
    help="Judge as this run's judge did (its config's judge: section).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Judge with this config's judge: section (with --run: instead of the run's).",
)
@click.option(
    "--judge",
    help="Judge model: one of the config's judges by name (default its first), else a transformers model "
    "(default embedded:smollm2, scoring: logprobs) or a served model name with --judge-base-url.",
)
@click.option("--judge-base-url", help="OpenAI-compatible server of the judge (OpenAI, vLLM, ...).")
@click.option("--judge-api-key-env", help="Environment variable holding the judge's API key.")
@click.option(
    "--test",
    "test_file",
    type=click.Path(dir_okay=False),
    help="DPO test split (dpo_test.jsonl): also the implicit-reward accuracy.",
)
@click.option("--beta", type=float, default=0.1, show_default=True, help="DPO beta for the implicit reward.")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Answer length limit.")
@click.option("--limit", type=int, help="Use at most this many prompts.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Where eval.json, eval_rows.jsonl and the call cache go (default CANDIDATE/eval).",
)
def evaluate(
    base,
    candidate,
    prompts,
    run_dir,
    config_path,
    judge,
    judge_base_url,
    judge_api_key_env,
    test_file,
    beta,
    max_tokens,
    limit,
    out_dir,
):
    """Win rate of a trained model against its base on held-out prompts, judged pairwise in both orders."""
    from pipeline.core.config import load_config  # start-up: pydantic, yaml
    from pipeline.core.progress import stage_lines  # start-up: rich.console, rich.progress, rich.table
    from training.eval import (  # start-up: polars, pydantic, yaml
        choose_judge,
        default_out,
        print_summary,
        read_prompts,
    )
    from training.eval import evaluate as run_eval  # start-up: polars, pydantic, yaml

    config = load_run_config(run_dir, config_path) if run_dir else load_config(config_path) if config_path else None
    if prompts is None:
        if not run_dir:
            raise click.UsageError(
                "pass --prompts FILE (e.g. RUN/exports/dpo_test.jsonl), or --run RUN to use its test split"
            )
        exports = Path(config.export.out_dir) if config.export and config.export.out_dir else Path(run_dir) / "exports"
        prompts = exports / "dpo_test.jsonl"
    spec, settings = choose_judge(config.judge if config else None, judge, judge_base_url, judge_api_key_env)
    with stage_lines("eval"):
        summary = run_eval(
            base,
            candidate,
            read_prompts(prompts, limit),
            spec,
            out_dir or default_out(candidate),
            judge_config=settings,
            max_tokens=max_tokens,
            test_file=test_file,
            beta=beta,
        )
    print_summary(summary)


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--run", "run_dir", help="Override the run directory of the config (rounds go to RUN/round-N).")
@click.option("--rounds", type=int, help="Override train.rounds.")
@click.option("--force", is_flag=True, help="Re-run stages even when complete (model calls still come from the cache).")
def rounds(config_path, run_dir, rounds, force):
    """Iterative on-policy DPO: generate, judge, pair, export, train (and eval),
    with each round's model generating the next."""
    from pipeline.core.config import load_config  # start-up: pydantic, yaml
    from pipeline.core.progress import summary  # start-up: rich.console, rich.progress, rich.table
    from training.rounds import run_rounds  # start-up: polars, pydantic, yaml
    from training.settings import TrainConfig  # start-up: pydantic, yaml

    config = load_config(config_path)
    if run_dir:
        config.run = run_dir
    if rounds:
        config.train = (config.train or TrainConfig()).model_copy(update={"rounds": rounds})
    for entry in run_rounds(config, force=force):
        summary(f"round {entry['round']}", {k: v for k, v in entry.items() if k != "round" and v is not None})


commands = [export, train, evaluate, rounds]
