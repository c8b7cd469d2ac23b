"""Durable call cache: every model call goes through it, so a restarted run repays nothing.

SQLite in WAL mode survives kill -9 of the process; a row is written as soon as its call finishes.
Only successful calls are stored: a failure is retried on the next run (or `--retry-failed`). Each row keeps
what its call cost at the model's configured prices, so the run's spend is known (budget_usd) after any crash.
The same file records the provider batch jobs a run has submitted (`batches`), so a restarted run waits
for them instead of paying for the requests again.
"""

import hashlib
import json
import sqlite3
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_budget: ContextVar[float | None] = ContextVar("budget_usd", default=None)


@contextmanager
def spending_limit(budget_usd: float | None):
    """Model calls made inside (pipeline/models/llm.py) may not take their cache's spend past budget_usd (None: no
    limit). The runner sets the config's budget_usd around each stage."""
    token = _budget.set(budget_usd)
    try:
        yield
    finally:
        _budget.reset(token)


def spending_allowed() -> float | None:
    """The budget spending_limit set here, or None."""
    return _budget.get()


def request_key(request: dict) -> str:
    """Hash of the full request (model, messages, sampling parameters...)."""
    blob = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class CallCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, kind TEXT, request TEXT, response TEXT, "
            # unix seconds; unixepoch('subsec') needs SQLite 3.42
            "created REAL DEFAULT ((julianday('now') - 2440587.5) * 86400.0), "
            "cost_usd REAL DEFAULT 0)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, server TEXT, keys TEXT, "
            "status TEXT DEFAULT 'open', "
            "created REAL DEFAULT ((julianday('now') - 2440587.5) * 86400.0))"
        )
        if "cost_usd" not in {
            row[1] for row in self._db.execute("PRAGMA table_info(calls)")
        }:  # a cache from before costs were kept
            try:
                self._db.execute("ALTER TABLE calls ADD COLUMN cost_usd REAL DEFAULT 0")
            except sqlite3.OperationalError as e:  # another process added it first
                if "duplicate column" not in str(e):
                    raise
        self._spent: float | None = None
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for key, response in self._db.execute(f"SELECT key, response FROM calls WHERE key IN ({marks})", chunk):
                    out[key] = json.loads(response)
        self.hits += len(out)
        self.misses += len(keys) - len(out)
        return out

    def put(self, key: str, request: dict, response: dict, kind: str = "", cost_usd: float = 0.0) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls (key, kind, request, response, cost_usd) VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    kind,
                    json.dumps(request, ensure_ascii=False),
                    json.dumps(response, ensure_ascii=False),
                    cost_usd,
                ),
            )
            if self._spent is not None:
                self._spent += cost_usd

    def spent_usd(self) -> float:
        """What the calls in this cache cost (summed once, then kept up to date by put)."""
        with self._lock:
            if self._spent is None:
                self._spent = self._db.execute("SELECT total(cost_usd) FROM calls").fetchone()[0]
            return self._spent

    def add_batch(self, batch_id: str, server: str, keys: list[str]) -> None:
        """Record a batch job the moment the provider accepted it: a restarted run then collects it, not resubmits."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO batches (batch_id, server, keys) VALUES (?, ?, ?)",
                (batch_id, server, json.dumps(keys)),
            )

    def open_batches(self, server: str) -> list[tuple[str, list[str]]]:
        """(batch_id, custom_ids) of the batches submitted to `server` and not yet collected, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT batch_id, keys FROM batches WHERE server = ? AND status = 'open' ORDER BY created", (server,)
            ).fetchall()
        return [(batch_id, json.loads(keys)) for batch_id, keys in rows]

    def close_batch(self, batch_id: str, status: str) -> None:
        """Mark a batch collected (its final status) or gone from the server (`missing`): it is not waited for again."""
        with self._lock:
            self._db.execute("UPDATE batches SET status = ? WHERE batch_id = ?", (status, batch_id))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def run_cache(run_path: str | Path) -> CallCache:
    return CallCache(Path(run_path) / "cache.sqlite")
