"""Progress where output goes to a log (nohup, CI, a batch scheduler): `prefab run` with its output in a file writes
plain lines, one as each stage and each long step starts and ends and one every PREFAB_PROGRESS_INTERVAL seconds in
between, with rates of the work done in this process only; on a terminal the bars stay."""

import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

from openai_server import structured_respond

ROOT = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(
    r"^\d\d:\d\d:\d\d (?P<step>[\w ]+): (?P<done>\d+)/(?P<total>\d+) \(\d+%\), (?P<rate>[\d.]+/s|rate -), "
    r"eta (?P<eta>\S+), elapsed \S+$"
)


def write_config(tmp_path: Path, url: str) -> Path:
    """6 prompts, 2 temperatures, one rubric aspect, 3 gold pairs: 12 calls each for generate, judge and calibrate,
    all to the test server (standing in for a paid API)."""
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?"}) + "\n" for i in range(6))
    )
    (tmp_path / "gold.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"Say {w}.", "chosen": f"{w}.", "rejected": f"I will not say {w}."}) + "\n"
            for w in ("hi", "yes", "blue")
        )
    )
    model = f"backend: openai, base_url: '{url}', concurrency: 2"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"run: {tmp_path / 'run'}\ningest: {{paths: [{tmp_path / 'p.jsonl'}]}}\n"
        f"generate: {{generators: [{{name: gen, model: gen, {model}, temperatures: [0.3, 1.0]}}]}}\n"
        f"judge: {{judges: [{{name: jud, model: jud, {model}}}], aspects: [{{name: helpfulness}}]}}\n"
        f"pair: {{}}\ncalibrate: {{gold: [{tmp_path / 'gold.jsonl'}]}}\n"
    )
    return config


def env(**extra) -> dict:
    return {**os.environ, "OPENAI_API_KEY": "test", **extra}


def run_to_file(config: Path, log: Path, *flags) -> str:
    """`prefab run CONFIG` in its own process, stdout and stderr into a file, progress every 0.2 s; the file's text."""
    with open(log, "w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.commands.cli", "run", str(config), *flags],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(PREFAB_PROGRESS_INTERVAL="0.2"),
            timeout=600,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    return text


def lines_between(lines: list[str], start: str, end: str) -> list[str]:
    first = next(i for i, line in enumerate(lines) if line.endswith(start))
    last = next(i for i, line in enumerate(lines) if i > first and end in line)
    return lines[first + 1 : last + 1]


def test_a_run_logged_to_a_file_shows_progress_during_each_long_step(openai_server, tmp_path):
    openai_server.respond = structured_respond  # judges get JSON of the schema they ask for
    openai_server.latency = 0.15  # 12 calls, 2 at a time: about a second per step, several 0.2 s intervals
    config = write_config(tmp_path, openai_server.url)
    text = run_to_file(config, tmp_path / "log")
    lines = text.splitlines()
    assert "\x1b[" not in text and "━" not in text  # no terminal control codes or bars in a log
    for stage, step in (("generate", "generate gen"), ("judge", "judge jud"), ("calibrate", "calibrate jud")):
        inside = lines_between(lines, f"stage {stage}: start", f"stage {stage}: done in")
        assert any(line.endswith(f"{step}: start, 12 to do") for line in inside), (stage, inside)
        during = [m for m in map(PROGRESS.match, inside) if m and m["step"] == step]
        assert len(during) >= 2, (stage, inside)  # lines while the work runs, not only when it ends
        assert all(m["total"] == "12" for m in during)
        assert any(0 < int(m["done"]) < 12 and m["rate"].endswith("/s") and m["eta"].endswith("s") for m in during), (
            stage,
            inside,
        )
        end = next(line for line in inside if f"{step}: done 12/12 in" in line)
        assert re.search(r"\([\d.]+/s\)$", end), end
    assert openai_server.total == 36

    # again, every call answered by the run's cache: done counts them, no rate claims them as work done now
    again = run_to_file(config, tmp_path / "log2", "--force").splitlines()
    assert openai_server.total == 36
    for step in ("generate gen", "judge jud", "calibrate jud"):
        end = next(line for line in again if f"{step}: done 12/12 in" in line)
        assert end.endswith("(12 from earlier work)"), end
        assert not [
            line for line in again if (m := PROGRESS.match(line)) and m["step"] == step and m["rate"] != "rate -"
        ]


def test_a_terminal_keeps_the_bars(openai_server, tmp_path):
    """The same run on a pseudo-terminal: rich bars, none of the log lines."""
    openai_server.respond = structured_respond
    config = write_config(tmp_path, openai_server.url)
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.commands.cli", "run", str(config), "--until", "generate"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env=env(PREFAB_PROGRESS_INTERVAL="0.2"),
    )
    os.close(child)
    chunks: list[bytes] = []

    def read():
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    assert proc.wait(timeout=600) == 0
    reader.join(timeout=60)
    os.close(main)
    shown = b"".join(chunks).decode(errors="replace")
    assert "generate gen" in shown and "━" in shown and "12/12" in shown, shown[-2000:]
    assert "to do" not in shown and "stage generate" not in shown, shown[-2000:]


def test_a_bad_interval_is_refused_before_any_work(prefab, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFAB_PROGRESS_INTERVAL", "soon")
    result = prefab("status", "--run", tmp_path / "none")
    assert (
        result.exit_code != 0
        and "PREFAB_PROGRESS_INTERVAL='soon'" in result.output
        and "Traceback" not in result.output
    )
