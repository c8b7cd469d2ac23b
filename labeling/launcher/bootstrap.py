"""Where the embedded Argilla lives (the labeling home, the server venv) and how its venv is made."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.errors import LabelingError
from pipeline.models.embedded import prefab_home

SERVER_SIDE = Path(__file__).resolve().parent.parent / "server"  # what runs with the server venv's python
REQUIREMENTS = SERVER_SIDE / "requirements.txt"


def default_home() -> Path:
    """The labeling home: PREFAB_LABELING_HOME, else $PREFAB_HOME/labeling."""
    return Path(os.environ.get("PREFAB_LABELING_HOME") or prefab_home() / "labeling")


def venv_dir() -> Path:
    return Path(os.environ.get("PREFAB_ARGILLA_VENV") or prefab_home() / "argilla-venv")


def external() -> bool:
    """True when commands should use an existing Argilla (ARGILLA_API_URL) instead of the embedded one."""
    return bool(os.environ.get("ARGILLA_API_URL"))


def bootstrap(venv: Path | None = None, quiet: bool = False) -> Path:
    """Create or reuse the server venv; returns its python. Reinstalls when the requirements change."""
    venv = Path(venv or venv_dir())
    python = venv / "bin" / "python"
    stamp = venv / ".prefab-requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    out = subprocess.DEVNULL if quiet else sys.stderr
    print(f"installing the Argilla server venv in {venv} (one time, a few minutes)", file=sys.stderr)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(REQUIREMENTS)],
            check=True,
            stdout=out,
            stderr=out,
        )
    except subprocess.CalledProcessError as e:
        raise LabelingError(
            f"could not install the Argilla server venv ({e})",
            where=str(venv),
            hint=f"check network access to PyPI, then run `{sys.executable} -m labeling.launcher bootstrap`",
        ) from e
    stamp.write_text(digest + "\n")
    return python
