"""The run directory: Parquet tables written atomically, manifest.json, content-hash ids."""

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pipeline.core import schema
from pipeline.core.errors import ModelError, PrefabError, RunError

VERSIONED = [
    "prefab",
    "polars",
    "openai",
    "transformers",
    "torch",
    "sentence-transformers",
    "trl",
    "argilla",
    "datasets",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


def content_id(*parts) -> str:
    """Stable id from JSON-serialisable parts: re-running a stage yields the same ids."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Whitespace-normalised messages, so trivially different copies hash alike."""
    return [{"role": m["role"], "content": " ".join(m["content"].split())} for m in messages]


def prompt_id(messages: list[dict]) -> str:
    return content_id("prompt", normalize_messages(messages))


def candidate_id(prompt_id: str, model: str, params: dict, sample_index: int) -> str:
    return content_id("candidate", prompt_id, model, params, sample_index)


def pair_id(candidate_a: str, candidate_b: str) -> str:
    """Order-free: the same two candidates are one pair whichever was chosen."""
    return content_id("pair", *sorted([candidate_a, candidate_b]))


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


class Run:
    """A run directory. Stages read earlier tables and write their own."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        nearest = next(
            (p for p in (self.path, *self.path.parents) if p.exists()), None
        )  # above it, all are directories
        file = nearest if nearest is not None and not nearest.is_dir() else None
        if file is not None:  # refused before any stage starts, so nothing is recorded as failed
            problem = "is a file, not a directory" if file == self.path else f"{file} is a file, not a directory"
            raise RunError(
                problem,
                where=str(self.path),
                hint="the run is a directory: pass a new or existing directory (--run DIR, or `run:` in the config)",
            )

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # tables
    def table_path(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    def has(self, name: str) -> bool:
        return self.table_path(name).exists()

    def read(self, name: str) -> pl.DataFrame:
        path = self._existing(name)
        with self._table_errors(path):
            return schema.conform(name, pl.read_parquet(path))

    def scan(self, name: str) -> pl.LazyFrame:
        """The table read lazily: only the columns and rows a query asks for are loaded (large tables)."""
        path = self._existing(name)
        with self._table_errors(path):
            pl.read_parquet_schema(path)  # a damaged or foreign file fails here, with its name, not mid-query
            return schema.conform(name, pl.scan_parquet(path))

    def parts(self, name: str, size: int, where=None):
        """The table as DataFrames of `size` consecutive rows (fewer where `where`, a function of a lazy frame, filters
        some out), each read on its own: a lazy slice loads only the row groups it covers, so memory does not grow
        with the table (a streaming collect_batches ran ahead of its reader, by more the longer the table). Part
        boundaries are fixed row offsets, the same on every run of the same table."""
        table = self.scan(name)
        for start in range(0, table.select(pl.len()).collect().item(), size):
            part = table.slice(start, size)
            yield (part if where is None else where(part)).collect()

    def _existing(self, name: str) -> Path:
        path = self.table_path(name)
        if not path.exists():
            raise RunError(
                f"{path} does not exist",
                hint=f"run the stage that writes {name!r} first (prefab status --run {self.path})",
            )
        return path

    def height(self, name: str) -> int:
        """Rows of a table, read from its Parquet footer."""
        path = self.table_path(name)
        with self._table_errors(path):
            return pl.scan_parquet(path).select(pl.len()).collect().item()

    @contextmanager
    def _table_errors(self, path: Path):
        """A damaged or foreign table file is a RunError that names it, not a polars traceback."""
        try:
            yield
        except RunError as e:  # schema mismatch: say which file
            e.where = e.where or str(path)
            raise
        except (pl.exceptions.PolarsError, OSError) as e:
            raise RunError(
                f"not a readable Parquet table ({str(e).splitlines()[0]})",
                where=str(path),
                hint="it was damaged or replaced outside prefab: re-run the stage that writes it "
                "(prefab run CONFIG --from STAGE, or the stage's own command)",
            ) from None

    def read_or_empty(self, name: str) -> pl.DataFrame:
        return self.read(name) if self.has(name) else schema.empty(name)

    def write(self, name: str, df: pl.DataFrame) -> pl.DataFrame:
        df = schema.conform(name, df)
        atomic_write(self.table_path(name), lambda p: df.write_parquet(p))
        return df

    # manifest
    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        hint = (
            "it was cut short or edited outside prefab: restore it from a backup, or move it aside and run the stages "
            "again (`prefab run CONFIG`; the tables stay, model calls come from the cache)"
        )
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RunError(
                f"not valid JSON ({e.msg}, line {e.lineno} column {e.colno})", where=str(self.manifest_path), hint=hint
            ) from None
        except UnicodeDecodeError as e:
            raise RunError(
                f"not valid UTF-8 ({e.reason} at byte {e.start})", where=str(self.manifest_path), hint=hint
            ) from None
        if not isinstance(data, dict):
            raise RunError(
                f"expected a JSON object, got {type(data).__name__}", where=str(self.manifest_path), hint=hint
            )
        return data

    def update_manifest(self, **fields) -> dict:
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.manifest()
        data.update(fields)
        atomic_write_text(self.manifest_path, json.dumps(data, indent=2, default=str))
        return data

    def stage_info(self, stage: str) -> dict:
        return self.manifest().get("stages", {}).get(stage, {})

    def record_stage(self, stage: str, **info) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.manifest()
        data.setdefault("stages", {}).setdefault(stage, {}).update(info)
        data["versions"] = package_versions()
        atomic_write_text(self.manifest_path, json.dumps(data, indent=2, default=str))

    @contextmanager
    def stage(self, name: str):
        """Time a stage and record its status; the body adds counts through the dict it gets.

        Nothing is written before the body succeeds, so a stage refused for bad input leaves the run
        directory as it was. An unexpected crash is recorded as failed.
        """
        info: dict = {}
        started = time.time()
        try:
            yield info
        except PrefabError:
            raise
        except BaseException as e:
            if self.path.is_dir():
                self.record_stage(
                    name,
                    status="failed",
                    error=f"{type(e).__name__}: {e}".splitlines()[0],
                    seconds=round(time.time() - started, 3),
                )
            raise
        self.record_stage(
            name, status="complete", finished_at=_now(), seconds=round(time.time() - started, 3), error=None, **info
        )

    def every_call_failed(self, stage: str, table: str, what: str, example: str, retry: str, **counts) -> PrefabError:
        """A stage that did its work but has nothing to hand on: the failures stay in its table, its status
        says failed, and the error (a ModelError) is returned for the caller to raise."""
        error = ModelError(
            f"every one of the {counts['failed']} {what} failed ({example[:160]}); they are recorded in {table}",
            where=str(self.table_path(table)),
            hint=f"fix what the error says (base_url, model, API key, server), then `{retry}`",
        )
        self.record_stage(stage, status="failed", error=error.message, finished_at=_now(), **counts)
        return error

    def is_complete(self, stage: str) -> bool:
        return self.stage_info(stage).get("status") == "complete"


ROW_GROUP = 10_000  # rows per row group of an assembled table: a lazy reader loads this many at a time


class TableParts:
    """A table a stage writes in parts as it goes (RUN/.parts/NAME/), so it holds one part's rows at a time and a
    restarted stage skips the parts already written. Each part is named by its index and a key of what it was made
    from (its input ids and the stage's settings): a part made from other input is not reused. `assemble` streams
    the parts into the one table file readers know, then removes them."""

    def __init__(self, run: Run, name: str):
        self.run, self.name = run, name
        self.dir = run.path / ".parts" / name

    def path(self, index: int, key: str) -> Path:
        return self.dir / f"{index:06d}-{key}.parquet"

    def has(self, index: int, key: str) -> bool:
        return self.path(index, key).exists()

    def write(self, index: int, key: str, df: pl.DataFrame) -> None:
        df = schema.conform(self.name, df)
        atomic_write(self.path(index, key), lambda p: df.write_parquet(p))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def assemble(self, keys: list[str]) -> None:
        """Parts 0..n-1 (by their keys), in order, into RUN/NAME.parquet without holding them in memory."""
        paths = [self.path(i, k) for i, k in enumerate(keys)]
        if paths:
            # the streaming engine with small row groups keeps memory flat in the number of parts (the default held
            # ~a third)
            atomic_write(
                self.run.table_path(self.name),
                lambda p: pl.scan_parquet(paths).sink_parquet(p, engine="streaming", row_group_size=ROW_GROUP),
            )
        else:
            self.run.write(self.name, schema.empty(self.name))
        self.clear()


def open_run(path: str | Path, *, must_exist: bool = True) -> Run:
    run = Run(path)
    if must_exist and not run.path.is_dir():
        raise RunError(
            f"run directory {run.path} does not exist", hint="create it with `prefab ingest` or `prefab run CONFIG`"
        )
    return run


def package_versions() -> dict:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
