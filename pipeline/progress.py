"""Rich progress bars (count, rate, ETA) and end-of-stage summary tables."""

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None):
    """Yield advance(n=1); shows done/total, rate and ETA on stderr."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=total == 0) as progress:
        task = progress.add_task(description, total=total, rate="")
        first: list[tuple[float, float]] = []  # (done, time) at the first advance: cached work is not part of the rate

        def advance(n: int = 1):
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
