"""Secrets never land in what prefab writes: run the whole pipeline with an API key and the Argilla owner's
credentials in play, then scan the run directory, its exports, report and cache, and the server's logs."""

import json
import random
from pathlib import Path

import polars as pl
import pytest
from test_kill import config, respond

pytestmark = pytest.mark.server

SECRET = "sk-prefab-SECRET-7f3a9c"


def holds(path: Path, secret: str) -> bool:
    """Whether a file written by prefab holds the secret: a Parquet table's values (its pages are compressed,
    so the bytes on disk need not show a string it holds), any other file's bytes."""
    if path.suffix == ".parquet":
        return secret in json.dumps(pl.read_parquet(path).to_dicts(), default=str)
    return secret.encode() in path.read_bytes()


def test_the_scan_finds_a_secret_inside_a_compressed_table(tmp_path):
    """The positive control of the scan: a key in one row of a table of ordinary text, compressed as prefab
    writes tables (zstd: the bytes on disk hold the key Huffman-coded, not as written)."""
    rng = random.Random(0)
    words = ["the", "answer", "is", "helpful", "score", "rationale", "good", "bad", "model", "json"]
    rows = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(2000)]
    rows[1000] += f" key={SECRET}"
    pl.DataFrame({"raw": rows}).write_parquet(tmp_path / "t.parquet")
    assert holds(tmp_path / "t.parquet", SECRET)
    assert not holds(tmp_path / "t.parquet", SECRET + "-other")


def test_no_secret_in_outputs_or_logs(tmp_path, openai_server, labeling_server, prefab, monkeypatch):
    from labeling_fixtures import unique

    monkeypatch.setenv("PREFAB_KILL_KEY", SECRET)
    openai_server.api_key = SECRET  # the fake API refuses calls without the key: proves it was sent
    openai_server.respond = respond
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Tell me fact {i}."}) + "\n" for i in range(6))
    )
    cfg = config(tmp_path, "secure", openai_server.url, unique("sec"))
    result = prefab("run", cfg)
    assert result.exit_code == 0, result.output
    assert openai_server.statuses.get("200", 0) > 0 and not openai_server.statuses.get("401")

    owner = json.loads((Path(labeling_server["home"]) / "owner.json").read_text())
    secrets = [SECRET, owner["api_key"], owner["password"]]
    run_dir = tmp_path / "secure"
    assert (run_dir / "report.html").exists() and list((run_dir / "exports").glob("*.jsonl"))
    scanned = 0
    places = [p for p in run_dir.rglob("*") if p.is_file()]
    places += [p for p in Path(labeling_server["home"]).rglob("*.log")]
    for path in places:
        scanned += 1
        for secret in secrets:
            assert not holds(path, secret), f"a secret is written in {path}"
    assert result.output.count(SECRET) == 0
    assert scanned >= 10
    # the credentials file itself is private
    assert (Path(labeling_server["home"]) / "owner.json").stat().st_mode & 0o077 == 0
