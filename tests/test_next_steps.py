"""The steps `make demo` prints run as printed in a new shell in the project: no PREFAB_HOME, no venv on PATH."""

import os
import subprocess
import sys

import pytest
from labeling_fixtures import unique
from labeling_runs import make_run

from labeling.push import demo_instructions

pytestmark = pytest.mark.server


def test_printed_next_steps_run_as_printed_in_a_new_shell(labeling_server, prefab, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / ".prefab").mkdir(parents=True)
    (project / ".prefab" / "labeling").symlink_to(
        labeling_server["home"]
    )  # the project's server, as `make demo` leaves it
    monkeypatch.chdir(project)
    run, _ = make_run(project / "runs" / unique("steps"), 4)
    assert prefab("push", "--run", run.path).exit_code == 0
    assert run.stage_info("push")["labeling_home"] == str(labeling_server["home"].resolve())

    text = demo_instructions(f"runs/{run.path.name}")
    steps = [
        line.strip().split("  ")[0]
        for line in text.splitlines()
        if " pull --run " in line or " export --run " in line or line.strip().endswith(" labeling down")
    ]
    pull, export = steps[0], steps[1]
    assert pull.split()[0] == f"{sys.prefix}/bin/prefab"  # not on this shell's PATH: printed as a path that runs
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("PREFAB_", "ARGILLA_", "VIRTUAL_ENV"))}
    shell["PATH"] = "/usr/bin:/bin"
    for command in (pull, export):
        done = subprocess.run(command, shell=True, cwd=project, env=shell, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert run.stage_info("pull")["status"] == "complete"
    assert (run.path / "exports" / "README.md").exists()

    # the project's own home is found from its directory: status reports the running server, not "not running"
    status = subprocess.run(
        f"{sys.prefix}/bin/prefab labeling status",
        shell=True,
        cwd=project,
        env=shell,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and labeling_server["url"] in status.stdout and "not running" not in status.stdout, (
        status.stdout
    )
