"""Secrets never land in what prefab writes: run the whole pipeline with an API key and the Argilla owner's
credentials in play, then scan the run directory, its exports, report and cache, and the server's logs."""

import json
from pathlib import Path

import pytest

from test_kill import config, respond

pytestmark = pytest.mark.server

SECRET = "sk-prefab-SECRET-7f3a9c"


def test_no_secret_in_outputs_or_logs(tmp_path, openai_server, labeling_server, prefab, monkeypatch):
    from labeling_fixtures import unique

    monkeypatch.setenv("PREFAB_KILL_KEY", SECRET)
    openai_server.api_key = SECRET  # the fake API refuses calls without the key: proves it was sent
    openai_server.respond = respond
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Tell me fact {i}."}) + "\n" for i in range(6)))
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
        data = path.read_bytes()
        scanned += 1
        for secret in secrets:
            assert secret.encode() not in data, f"a secret is written in {path}"
    assert result.output.count(SECRET) == 0
    assert scanned >= 10
    # the credentials file itself is private
    assert (Path(labeling_server["home"]) / "owner.json").stat().st_mode & 0o077 == 0
