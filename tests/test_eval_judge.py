"""`prefab eval` judges with the judges a run uses: the embedded judge (SmolLM2, which cannot write a JSON verdict)
gives a verdict on every prompt by its A/B token probabilities; a run's own judge settings reach the judge; the
console shows prefab's table and progress, not TRL's metrics dict, with rates of the work done in that process."""

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from labeling_runs import make_run
from test_eval import perturbed_smollm2

from pipeline.core.config import JudgeConfig, ModelSpec
from training.settings import ExportConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A run (with its config snapshot) whose export holds a DPO test split of 3 pairs, and a candidate model: a
    copy of SmolLM2 with slightly perturbed weights, so the two models' answers differ."""
    from pipeline.core.runner import snapshot
    from training.export.stage import export

    root = tmp_path_factory.mktemp("eval-judge")
    run, config = make_run(root / "run", n_pairs=6, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    export(run, ExportConfig(test_share=0.5, formats=["trl-dpo"]))
    run.update_manifest(config=snapshot(config))
    candidate = perturbed_smollm2(root / "candidate")
    return run, config, candidate


def test_the_embedded_judge_judges_every_prompt(held_out, tmp_path):
    """The issue's command (embedded judge by default, the test split as prompts and for the implicit reward), its
    output in a file: every prompt judged, prefab's table, no TRL dict, no rate for work done in no time."""
    run, _, candidate = held_out
    test = run.path / "exports" / "dpo_test.jsonl"
    log = tmp_path / "log"
    with open(log, "w") as out:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.commands.cli",
                "eval",
                "--base",
                "embedded:smollm2",
                "--candidate",
                str(candidate),
                "--prompts",
                str(test),
                "--test",
                str(test),
                "--max-tokens",
                "16",
                "--out",
                str(tmp_path / "eval"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "eval" / "eval_rows.jsonl").read_text().splitlines()]
    assert summary["prompts"] == 3 and summary["judged"] == 3 and summary["failed"] == 0, summary
    assert summary["judge_scoring"] == "logprobs"
    assert all(r["verdict_ab"] and r["verdict_ba"] and r["judge_error"] is None for r in rows), rows
    assert any(r["base"] != r["candidate"] for r in rows)
    assert re.search(r"prompts judged\s+│\s+3", text) and re.search(r"failed\s+│\s+0", text), text[-3000:]
    assert "implicit reward accuracy" in text and "{'eval_" not in text, text[-3000:]
    for line in re.findall(
        r".*: done \d+/\d+ in .*", text
    ):  # a step's rate is at most its count over its (rounded) time
        m = re.search(r"done (\d+)/\d+ in (?:(\d+)m)?(\d+)s \(([\d.]+)/s", line)
        seconds = int(m[3]) + 60 * int(m[2] or 0) if m else 0
        if seconds >= 2:
            assert float(m[4]) <= int(m[1]) / (seconds - 0.5) + 0.005, line


def test_eval_takes_the_runs_judge_settings(held_out, openai_server, prefab, tmp_path):
    """`--run RUN`: the run's judge (a served model standing in for a paid API) with the run's judge settings, on the
    run's test split."""
    run, config, candidate = held_out
    served = ModelSpec(name="served", backend="openai", model="served-judge", base_url=openai_server.url)
    config.judge = JudgeConfig(judges=[served], max_tokens=77, aspects=[{"name": "helpfulness"}])
    from pipeline.core.runner import snapshot

    run.update_manifest(config=snapshot(config))
    openai_server.respond = lambda request: json.dumps({"rationale": "first", "winner": "A"})
    openai_server.keep_bodies = True
    result = prefab(
        "eval",
        "--run",
        run.path,
        "--base",
        "embedded:smollm2",
        "--candidate",
        candidate,
        "--max-tokens",
        "16",
        "--out",
        tmp_path / "eval",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert summary["judge"] == "served" and summary["judge_scoring"] == "json" and summary["judged"] == 3
    rows = [json.loads(line) for line in (tmp_path / "eval" / "eval_rows.jsonl").read_text().splitlines()]
    # 3 test prompts in both orders; where both models answered alike, the two orders are one request, asked once
    assert openai_server.total == sum(1 if r["base"] == r["candidate"] else 2 for r in rows)
    bodies = openai_server.bodies
    assert {b["model"] for b in bodies} == {"served-judge"} and {b["max_tokens"] for b in bodies} == {77}
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
