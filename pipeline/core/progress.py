"""Progress (count, rate, ETA) and end-of-stage summary tables: rich bars on a terminal, plain time-stamped lines
in a log (output to a file, a pipe, CI), at a steady interval."""

import os
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.core.errors import ConfigError

console = Console(stderr=True)
THIRD_PARTY = (
    "torch",
    "transformers",
    "trl",
    "datasets",
    "accelerate",
    "peft",
    "sentence_transformers",
    "huggingface_hub",
)
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
    """Yield advance(n=1, note=None, cached=False); shows done/total, rate and ETA on stderr, and the last note after
    the description (a batch's status, which changes while no request finishes). Work advanced as `cached` (answered
    by the call cache or an earlier run's parts) counts toward done but not toward the rate, nor the ETA's speed.

    On a terminal it is a rich bar; otherwise (a log file, a pipe, CI) plain lines: one at the start, one every
    PREFAB_PROGRESS_INTERVAL seconds while it runs, whether or not work finished, and one at the end."""
    count = _Count(description, total)
    if total == 0:
        yield count.advance
        return
    if not console.is_terminal:
        with _log_lines(count):
            yield count.advance
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta {task.fields[eta]}"),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="", eta="-:--:--")

        def advance(n: int = 1, note: str | None = None, cached: bool = False):
            count.advance(n, note, cached)
            rate, eta = count.rate(), count.eta()
            progress.update(
                task,
                description=count.title(),
                completed=count.done,
                rate=f"{rate:.1f}/s" if rate else "",
                eta=str(timedelta(seconds=round(eta))) if eta is not None else "-:--:--",
            )

        yield advance


class _Count:
    """What a progress display shows: done of total, the part done here (not cached), rate and ETA."""

    def __init__(self, description: str, total: int | None):
        self.description, self.total = description, total
        self.note: str | None = None
        self.done = self.cached = 0
        self.started = time.monotonic()

    def advance(self, n: int = 1, note: str | None = None, cached: bool = False) -> None:
        if note is not None:
            self.note = note
        self.done += n
        if cached:
            self.cached += n

    def title(self) -> str:
        return f"{self.description} {self.note}" if self.note else self.description

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float | None:
        """Items per second done in this process since the display started."""
        fresh, elapsed = self.done - self.cached, self.elapsed()
        return fresh / elapsed if fresh > 0 and elapsed > 0 else None

    def eta(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate is None:
            return None
        return max(self.total - self.done, 0) / rate

    def line(self) -> str:
        total = "?" if self.total is None else f"{self.total:,}"
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        rate, eta = self.rate(), self.eta()
        return (
            f"{self.title()}: {self.done:,}/{total}{share}, {f'{rate:.2f}/s' if rate else 'rate -'}, "
            f"eta {duration(eta) if eta is not None else '-'}, elapsed {duration(self.elapsed())}"
        )


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h03m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_interval() -> float:
    """Seconds between plain progress lines: PREFAB_PROGRESS_INTERVAL, default 30."""
    raw = os.environ.get("PREFAB_PROGRESS_INTERVAL", "").strip()
    if not raw:
        return 30.0
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(
            f"PREFAB_PROGRESS_INTERVAL={raw!r} is not a number of seconds above 0",
            hint="set it to e.g. 30 (the default), or unset it",
        )
    return value


def log_line(text: str) -> None:
    """One plain line on stderr, time-stamped, never wrapped (a log reader greps it)."""
    console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _log_lines(count: _Count):
    """A start line, a line per interval from a background thread (a batch of slow calls finishes nothing for
    minutes, and the log still shows the work is alive), and an end line."""
    every = progress_interval()
    log_line(f"{count.description}: start, {'?' if count.total is None else f'{count.total:,}'} to do")
    stop = threading.Event()

    def report():
        while not stop.wait(every):
            log_line(count.line())

    reporter = threading.Thread(target=report, name="prefab-progress", daemon=True)
    reporter.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        reporter.join()
        rate = count.rate()
        total = "?" if count.total is None else f"{count.total:,}"
        end = f"{count.title()}: {'done' if ok else 'stopped at'} {count.done:,}/{total} in {duration(count.elapsed())}"
        details = [f"{rate:.2f}/s" if rate else None, f"{count.cached:,} from earlier work" if count.cached else None]
        log_line(end + (f" ({', '.join(d for d in details if d)})" if any(details) else ""))


@contextmanager
def stage_lines(name: str):
    """A line as a stage starts and one as it ends (with its time), where output goes to a log rather than a terminal:
    what a reader of the log looks for first. On a terminal the bars and summary tables say it."""
    if console.is_terminal:
        yield
        return
    started = time.monotonic()
    log_line(f"stage {name}: start")
    ok = False
    try:
        yield
        ok = True
    finally:
        log_line(f"stage {name}: {'done' if ok else 'failed'} in {duration(time.monotonic() - started)}")


def summary(title: str, rows: dict) -> None:
    """Print a two-column table of a stage's counts."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows.items():
        table.add_row(str(key), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
