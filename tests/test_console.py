"""What a user sees: prefab's own bars and tables, without third-party progress bars (transformers' weight
loading, datasets' map) unless `prefab --verbose` asks for them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIRD_PARTY_BARS = ("Loading weights", "it/s]")

pytestmark = pytest.mark.slow


def run_slice(tmp_path: Path, *flags) -> str:
    """ingest -> generate (embedded SmolLM2, 3 prompts, 4 tokens) -> embed, as `prefab [flags] run`; the console output."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Say hi.", "Name a colour.", "Count to three.")))
    config = tmp_path / "c.yaml"
    config.write_text(f"run: {tmp_path / 'run'}\ningest: {{paths: [{tmp_path / 'p.jsonl'}]}}\n"
                      "generate:\n  generators:\n    - {name: smollm2, model: 'embedded:smollm2', temperatures: [0.3], max_tokens: 4}\n"
                      "embed: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE_PROGRESS", "HF_DATASETS_DISABLE",
                                                                     "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"))}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *flags, "run", str(config)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr


def test_third_party_bars_only_with_verbose(tmp_path):
    quiet = run_slice(tmp_path / "quiet")
    assert "generate smollm2" in quiet and "embed" in quiet and "candidates" in quiet  # prefab's own bars and tables
    assert not [bar for bar in THIRD_PARTY_BARS if bar in quiet], quiet[-3000:]
    verbose = run_slice(tmp_path / "verbose", "--verbose")
    assert "Loading weights" in verbose  # the same run shows them when asked
