"""Rich progress bars (count, rate, ETA) and end-of-stage summary tables."""

import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
THIRD_PARTY = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "sentence_transformers", "huggingface_hub")
third_party_log: list[Path] = []  # where quieted warnings go: the run's logs/third_party.log, once a stage opens a run


def quiet_third_party() -> None:
    """Keep third-party progress bars (tqdm: transformers' weight loading, datasets' map) and warnings off the
    console, where prefab's own bars and tables say what matters; `prefab --verbose` leaves them on. Set
    before those libraries are imported: they read these variables then."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers follows it
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        parts = Path(filename).parts
        if "site-packages" not in parts or parts[parts.index("site-packages") + 1] not in THIRD_PARTY:
            return shown(message, category, filename, lineno, file, line)
        if third_party_log:
            third_party_log[-1].parent.mkdir(parents=True, exist_ok=True)
            with open(third_party_log[-1], "a") as log:
                log.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


@contextmanager
def progress_bar(description: str, total: int | None):
    """Yield advance(n=1, note=None); shows done/total, rate and ETA on stderr, and the last note after the
    description (a batch's status, which changes while no request finishes)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=total == 0) as progress:
        task = progress.add_task(description, total=total, rate="")
        first: list[tuple[float, float]] = []  # (done, time) at the first advance: cached work is not part of the rate

        def advance(n: int = 1, note: str | None = None):
            if note is not None:
                progress.update(task, description=f"{description} {note}")
            progress.advance(task, n)
            done = progress.tasks[0].completed
            if not first:
                first.append((done, time.monotonic()))
                return
            elapsed = time.monotonic() - first[0][1]
            if elapsed > 0:
                progress.update(task, rate=f"{(done - first[0][0]) / elapsed:.1f}/s")

        yield advance


def summary(title: str, rows: dict) -> None:
    """Print a two-column table of a stage's counts."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows.items():
        table.add_row(str(key), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
