"""What a user sees: prefab's own bars and tables, without third-party progress bars (transformers' weight
loading, datasets' map, the Trainer's) or known-harmless warnings unless `prefab --verbose` asks for them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIRD_PARTY_BARS = ("Loading weights", "it/s]")
# what TRL/transformers/torch print while training on CPU: datasets' map bars, the Trainer's log dicts, warnings
TRAIN_NOISE = ("Tokenizing train dataset", "it/s]", "{'loss'", "Warning:")

pytestmark = pytest.mark.slow


def prefab(*args, cwd=ROOT) -> str:
    """`prefab ARGS` in a fresh interpreter, with none of the variables that quiet third parties inherited;
    its console output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "TQDM_",
                "HF_HUB_DISABLE_PROGRESS",
                "HF_DATASETS_DISABLE",
                "TRANSFORMERS_VERBOSITY",
                "DATASETS_VERBOSITY",
                "PYTHONWARNINGS",
            )
        )
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr


def run_slice(tmp_path: Path, *flags) -> str:
    """ingest -> generate (embedded SmolLM2, 3 prompts, 4 tokens) -> embed, as `prefab [flags] run`;
    the console output."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ("Say hi.", "Name a colour.", "Count to three."))
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"run: {tmp_path / 'run'}\ningest: {{paths: [{tmp_path / 'p.jsonl'}]}}\n"
        "generate:\n  generators:\n"
        "    - {name: smollm2, model: 'embedded:smollm2', temperatures: [0.3], max_tokens: 4}\n"
        "embed: {}\n"
    )
    return prefab(*flags, "run", str(config))


def test_third_party_bars_only_with_verbose(tmp_path):
    quiet = run_slice(tmp_path / "quiet")
    assert "generate smollm2" in quiet and "embed" in quiet and "candidates" in quiet  # prefab's own bars and tables
    assert not [bar for bar in THIRD_PARTY_BARS if bar in quiet], quiet[-3000:]
    verbose = run_slice(tmp_path / "verbose", "--verbose")
    assert "Loading weights" in verbose  # the same run shows them when asked


@pytest.mark.training
def test_training_shows_one_bar_and_logs_the_rest(tmp_path):
    """`prefab train dpo` (1 step): the step/loss bar, no datasets bars, log dicts or warnings; those go to
    OUTPUT_DIR/logs/third_party.log and trainer_log.jsonl, and to the console with --verbose."""
    import polars as pl
    from labeling_runs import make_run

    from training.export.stage import export
    from training.settings import ExportConfig

    run, _ = make_run(tmp_path / "run", n_pairs=3, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    export(run, ExportConfig(test_share=0))
    data = run.path / "exports" / "dpo_train.jsonl"
    sets = [
        f"--set={k}={v}"
        for k, v in {
            "max_steps": 1,
            "per_device_train_batch_size": 1,
            "max_length": 48,
            "save_strategy": "no",
            "logging_steps": 1,
        }.items()
    ]

    quiet = prefab("train", "dpo", "--data", str(data), "--output-dir", str(tmp_path / "quiet"), *sets)
    assert "train" in quiet and "loss" in quiet and "train dpo" in quiet  # prefab's bar and summary
    assert not [noise for noise in TRAIN_NOISE if noise in quiet], quiet[-3000:]
    logged = (tmp_path / "quiet" / "logs" / "third_party.log").read_text()
    assert (
        "pin_memory" in logged and "is_gradient_checkpointing" in logged
    )  # the two warnings: kept, off the console
    assert "loss" in (tmp_path / "quiet" / "trainer_log.jsonl").read_text()

    verbose = prefab("--verbose", "train", "dpo", "--data", str(data), "--output-dir", str(tmp_path / "verbose"), *sets)
    assert "Tokenizing train dataset" in verbose and "Warning:" in verbose
