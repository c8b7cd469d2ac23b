"""The bad-input corpus (tests/bad_inputs/cases.yaml): a clear error, its exit code, no traceback,
and existing outputs left byte-for-byte as they were."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import snapshot_dir

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "cases.yaml").read_text())


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A run that already holds prompts, as a user's would when they make a mistake."""
    from pipeline.cli import cli
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("existing")
    src = root / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(5)))
    result = CliRunner().invoke(cli, ["ingest", "--run", str(root / "run"), str(src)])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case, tmp_path, existing_run, cli_runner, monkeypatch):
    from pipeline.cli import cli

    subst = lambda s: s.replace("{dir}", str(tmp_path)).replace("{run}", str(existing_run))
    for name, value in (case.get("env") or {}).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, subst(value))
    for name, text in (case.get("files") or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(subst(text))
    for name, hexdata in (case.get("files_hex") or {}).items():
        (tmp_path / name).write_bytes(bytes.fromhex(hexdata))
    before = snapshot_dir(existing_run)
    result = cli_runner.invoke(cli, [subst(a) for a in case["args"]])
    output = result.output
    assert result.exit_code == case.get("exit", 2), output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{output}"
    assert "Traceback" not in output
    for fragment in case["expect"]:
        assert subst(fragment) in output, f"{fragment!r} not in:\n{output}"
    assert snapshot_dir(existing_run) == before
