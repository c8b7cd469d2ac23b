"""Everyday commands stay fast: `prefab status`, `report`, `export` without a token limit and `pull` never
import torch or transformers (seconds of start-up and hundreds of MB), checked in a fresh interpreter."""

import subprocess
import sys
from pathlib import Path

import pytest
from labeling_runs import make_run

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")
CODE = """
import sys
from pipeline.commands.cli import cli
try:
    cli(args={args!r}, prog_name="prefab")
    code = 0
except SystemExit as e:
    code = e.code or 0
print("EXIT", code, "HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def run_prefab(*args) -> tuple[int, list, str]:
    """(exit code, heavy modules imported, output) of one command in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", CODE.format(args=[str(a) for a in args], heavy=HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = [line for line in result.stdout.splitlines() if line.startswith("EXIT ")]
    assert last, result.stdout[-2000:] + result.stderr[-2000:]
    _, code, _, heavy = last[-1].split(" ", 3)
    return int(code), eval(heavy), result.stdout + result.stderr


def test_status_report_and_export_import_no_torch(tmp_path):
    run, _ = make_run(tmp_path / "run", n_pairs=6)
    for args in (
        ["status", "--run", run.path],
        ["report", "--run", run.path],
        ["export", "--run", run.path, "--source", "auto"],
    ):
        code, heavy, output = run_prefab(*args)
        assert code == 0 and heavy == [], (args, heavy, output[-1500:])
    card = (run.path / "exports" / "README.md").read_text()
    assert "## Lengths (characters; tokens with --tokenizer" in card and "(tokens not counted)" in card


def test_a_token_limit_still_counts_tokens(tmp_path):
    run, _ = make_run(tmp_path / "run", n_pairs=6)
    code, heavy, output = run_prefab("export", "--run", run.path, "--source", "auto", "--max-tokens", "500")
    assert code == 0 and "transformers" in heavy, output[-1500:]
    assert "## Lengths (tokens" in (run.path / "exports" / "README.md").read_text()


@pytest.mark.server
def test_pull_imports_no_torch(labeling_server, tmp_path):
    run, _ = make_run(tmp_path / "run", n_pairs=4)
    assert run_prefab("push", "--run", run.path)[0] == 0
    code, heavy, output = run_prefab("pull", "--run", run.path)
    assert code == 0 and heavy == [], output[-1500:]
