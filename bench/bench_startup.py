"""How long everyday commands take to start and finish, before and after, in one run.

`prefab --help`, `status`, `report` and `export` (no token limit) on a small run, each in a fresh
interpreter, the median of a few wall-clock timings; the same commands from a checkout of another commit
(BENCH_STARTUP_BASE, default HEAD: the working tree against its last commit) are the baseline, measured
alternately in the same run. Target: under 2 s each.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = os.environ.get("BENCH_STARTUP_BASE", "HEAD")
REPEAT = int(os.environ.get("BENCH_STARTUP_REPEAT", "3"))
CODE = "import sys; from {} import cli; cli(args=sys.argv[1:], prog_name='prefab')"
MAKE_RUN = (
    "import sys, pathlib; sys.path.insert(0, 'tests'); from labeling_runs import make_run; "
    "make_run(pathlib.Path(sys.argv[1]), n_pairs=12)"
)


def own_entry_points(tree: Path, where: Path) -> dict:
    """An environment in which `tree`'s code finds its own stages, commands and report sections: a dist-info made
    from its pyproject.toml, put before the installed one on PYTHONPATH (pipeline/core/registry.py reads entry points,
    and the installed ones are HEAD's)."""
    project = tomllib.loads((tree / "pyproject.toml").read_text())["project"]
    info = where / "prefab-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: prefab\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n"
            for group, points in project.get("entry-points", {}).items()
        )
    )
    return {**os.environ, "PYTHONPATH": f"{where}{os.pathsep}{tree}"}


def timed(tree: Path, args: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    cli = (
        "pipeline.commands.cli" if (tree / "pipeline" / "commands" / "cli.py").exists() else "pipeline.cli"
    )  # an older layout
    result = subprocess.run(
        [sys.executable, "-c", CODE.format(cli), *args], cwd=tree, capture_output=True, text=True, env=env
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"prefab {' '.join(args)} in {tree} failed:\n{result.stdout[-800:]}{result.stderr[-800:]}")
    return elapsed


def main() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base_tree), BASE], cwd=ROOT, check=True)
        try:
            rows = []
            runs = {}
            envs = {"base": own_entry_points(base_tree, Path(tmp) / "base-entry-points"), "head": None}
            for tree in (base_tree, ROOT):  # both sides start from fresh bytecode, as an installed copy does (with
                # PYTHONDONTWRITEBYTECODE set, a fresh worktree would otherwise compile every module on every run)
                packages = [p for p in ("pipeline", "labeling", "training") if (tree / p).is_dir()]
                subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], cwd=tree, check=True)
            for label, tree in (("base", base_tree), ("head", ROOT)):  # each side reads a run its own code wrote
                runs[label] = Path(tmp) / f"run-{label}"
                subprocess.run(
                    [sys.executable, "-c", MAKE_RUN, str(runs[label])],
                    cwd=tree,
                    check=True,
                    capture_output=True,
                    env=envs[label],
                )
            commands = {
                "prefab --help": lambda run: ["--help"],
                "prefab status": lambda run: ["status", "--run", str(run)],
                "prefab report": lambda run: ["report", "--run", str(run)],
                "prefab export (no token limit)": lambda run: ["export", "--run", str(run), "--source", "auto"],
            }
            for name, args in commands.items():
                timed(ROOT, args(runs["head"]))  # warm the file cache once
                head, base = [], []
                for _ in range(REPEAT):  # alternate, so a slow moment of the machine hits both sides
                    head.append(timed(ROOT, args(runs["head"])))
                    base.append(timed(base_tree, args(runs["base"]), envs["base"]))
                h, b = statistics.median(head), statistics.median(base)
                rows.append(
                    {
                        "name": f"{name}, wall s (median of {REPEAT})",
                        "value": round(h, 2),
                        "baseline": round(b, 2),
                        "ratio": round(b / h, 2),
                        "target": "< 2 s",
                        "unit": "s",
                        "ok": h < 2.0,
                    }
                )
            return rows
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT)
            shutil.rmtree(base_tree, ignore_errors=True)


if __name__ == "__main__":
    for row in main():
        print(row)
