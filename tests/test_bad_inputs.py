"""The bad-input corpus (tests/bad_inputs/cases.yaml): a clear error, its exit code, no traceback,
and existing outputs left byte-for-byte as they were."""

import ctypes
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import snapshot_dir

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "cases.yaml").read_text())


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A run that already holds prompts, as a user's would when they make a mistake."""
    from click.testing import CliRunner

    from pipeline.commands.cli import cli

    root = tmp_path_factory.mktemp("existing")
    src = root / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(5)))
    result = CliRunner().invoke(cli, ["ingest", "--run", str(root / "run"), str(src)])
    assert result.exit_code == 0, result.output
    return root / "run"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextmanager
def unreadable(paths: list[Path]):
    """The files as a user meets them when they may not read them (mode 000).

    Root reads any file whatever its mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so as root this thread drops
    those two capabilities from its effective set for the case (capset(2)) and takes them back after.
    """
    for path in paths:
        path.chmod(0)
    libc = ctypes.CDLL(None, use_errno=True)
    header, saved = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    dropped = False
    try:
        if os.geteuid() == 0:
            if libc.capget(ctypes.byref(header), saved) != 0:
                pytest.skip("running as root and capget(2) failed: cannot make a file unreadable")
            reduced = (_CapData * 2)(*(_CapData(d.effective, d.permitted, d.inheritable) for d in saved))
            reduced[0].effective &= ~0b110  # bits 1 and 2: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.capset(ctypes.byref(header), reduced) != 0:
                pytest.skip("running as root and capset(2) failed: cannot make a file unreadable")
            dropped = True
        for path in paths:
            try:
                path.open("rb").close()
                pytest.skip(f"{path} stays readable with mode 000 here")
            except PermissionError:
                pass
        yield
    finally:
        if dropped:
            libc.capset(ctypes.byref(header), saved)
        for path in paths:
            path.chmod(0o644)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case, tmp_path, existing_run, cli_runner, monkeypatch):
    from pipeline.commands.cli import cli

    def subst(s):
        return s.replace("{dir}", str(tmp_path)).replace("{run}", str(existing_run))

    for name, value in (case.get("env") or {}).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, subst(value))
    if case.get("copy_run"):  # a copy of the run at {dir}/run, for cases that damage it: never the shared {run}
        shutil.copytree(existing_run, tmp_path / "run")
    for name, source in (case.get("copies") or {}).items():
        shutil.copyfile(tmp_path / source, tmp_path / name)
    for name, text in (case.get("files") or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(subst(text))
    for name, hexdata in (case.get("files_hex") or {}).items():
        (tmp_path / name).write_bytes(bytes.fromhex(hexdata))
    before = snapshot_dir(existing_run)
    copy_before = snapshot_dir(tmp_path / "run") if case.get("copy_run") else None
    with unreadable([tmp_path / name for name in case.get("unreadable") or []]):
        result = cli_runner.invoke(cli, [subst(a) for a in case["args"]])
    output = result.output
    assert result.exit_code == case.get("exit", 2), output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{output}"
    assert "Traceback" not in output
    for fragment in case["expect"]:
        assert subst(fragment) in output, f"{fragment!r} not in:\n{output}"
    for fragment in case.get("absent") or []:
        assert subst(fragment) not in output, f"{fragment!r} should not be in:\n{output}"
    assert snapshot_dir(existing_run) == before
    if copy_before is not None:
        assert snapshot_dir(tmp_path / "run") == copy_before


def test_user_error_leaves_a_complete_stage_complete(tmp_path, prefab):
    """A stage refused before its work (missing section, unreadable input) keeps its earlier status and table."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(3)))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"run: {tmp_path / 'run'}\ningest:\n  paths: [{prompts}]\ndedup:\n  semantic: false\n  clusters: null\n"
    )
    assert prefab("run", config).exit_code == 0
    run_dir = tmp_path / "run"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {manifest["stages"][s]["status"] for s in ("ingest", "dedup")} == {"complete"}
    before = snapshot_dir(run_dir)
    no_dedup = tmp_path / "no_dedup.yaml"
    no_dedup.write_text(f"run: {run_dir}\ningest:\n  paths: [{prompts}]\n")
    result = prefab("dedup", "--run", run_dir, "--config", no_dedup)
    assert result.exit_code == 2 and "no `dedup:` section" in result.output, result.output
    with unreadable([prompts]):
        result = prefab("ingest", "--run", run_dir, prompts)
    assert result.exit_code == 2 and "permission" in result.output.lower(), result.output
    assert snapshot_dir(run_dir) == before
