"""Adding a stage is one module and one entry point: a package of this test's own registers a stage with its own
settings section, and `prefab run` validates that section, runs the stage in its order and records its counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODULE = '''"""Count the prompts that mention a word."""

from pipeline.core.config import Config, Strict
from pipeline.core.stage import Stage
from pipeline.core.store import Run


class WordCountConfig(Strict):
    word: str
    case_sensitive: bool = False


def step(config: Config, run: Run, **_) -> dict:
    settings = config.require("wordcount")
    texts = [" ".join(m["content"] for m in messages) for messages in run.read("prompts")["messages"].to_list()]
    if not settings.case_sensitive:
        texts = [t.lower() for t in texts]
    return {"prompts_with_word": sum(settings.word in t for t in texts)}


STAGE = Stage(name="wordcount", order=15, step=step, section="wordcount", settings=WordCountConfig)
'''


def install(site: Path) -> None:
    """The package, and the metadata an installer would write for it (its entry point)."""
    (site / "wordcount").mkdir(parents=True)
    (site / "wordcount" / "__init__.py").write_text(MODULE)
    dist = site / "wordcount-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wordcount\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[prefab.stages]\nwordcount = wordcount:STAGE\n")


def prefab(site: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.commands.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_stage_from_another_package_brings_its_own_section_and_runs_in_prefab_run(tmp_path):
    site = tmp_path / "site"
    install(site)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p}) + "\n" for p in ("An Apple a day?", "Pears or apples?", "Why is the sky blue?")
        )
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        f"run: {tmp_path / 'run'}\nstages: [ingest, wordcount]\ningest: {{paths: [{prompts}]}}\n"
        "wordcount: {word: apple}\n"
    )

    result = prefab(site, "run", config)
    assert result.returncode == 0, result.stderr
    assert "ran ingest, wordcount" in result.stdout
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["wordcount"]["status"] == "complete"
    assert manifest["stages"]["wordcount"]["prompts_with_word"] == 2
    assert manifest["config"]["wordcount"] == {"word": "apple", "case_sensitive": False}

    # its section is validated by its own settings model: a wrong key is refused, naming the file and line
    config.write_text(
        f"run: {tmp_path / 'run2'}\nstages: [ingest, wordcount]\ningest: {{paths: [{prompts}]}}\n"
        "wordcount:\n  word: apple\n  case_sensitiv: true\n"
    )
    result = prefab(site, "run", config)
    assert result.returncode != 0
    assert f"{config}:6" in result.stderr and "case_sensitiv" in result.stderr, result.stderr
    assert not (tmp_path / "run2").exists()

    # and it has a command of its own, whose help is its module's docstring
    result = prefab(site, "wordcount", "--help")
    assert result.returncode == 0, result.stderr
    assert "Count the prompts that mention a word." in result.stdout

    # without the package, the section is a key no stage reads
    result = prefab(tmp_path / "nothing", "run", config)
    assert result.returncode != 0 and "wordcount" in result.stderr
