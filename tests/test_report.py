"""The run report: `prefab run` through dedup, generate, judge, embed, pair and route (generator and judges on the
local OpenAI-compatible server, the real embedding model), then report.html: self-contained, with its plots."""

import base64
import json
import re
import sys

import pytest
from quality_runs import make_run

from pipeline.stages import report

SECTION_TITLES = [
    "Overview",
    "Prompts, dedup and diversity",
    "Candidates",
    "Judge scores",
    "Pairs and routing",
    "Judge consistency",
    "Failures",
]


def fake_llm(request):
    """Generator, rubric judge and pairwise judge in one: scores grow with the answer's length; every 5th answer
    the judge cannot parse; the pairwise judge prefers the longer answer (except on ties)."""
    system = request["messages"][0]["content"] if request["messages"][0]["role"] == "system" else ""
    user = request["messages"][-1]["content"]
    if "Rate the response" in system:
        answer = user.split("## Response to rate\n\n", 1)[1]
        names = re.findall(r"^- (\w+) \(", system, re.M)
        if len(answer) % 5 == 0:
            return "I cannot rate this."
        return json.dumps({n: {"rationale": "fine", "score": 1 + len(answer) % 5} for n in names})
    if "Compare two responses" in system:
        a = user.split("## Response A\n\n", 1)[1].split("\n\n## Response B\n\n")[0]
        b = user.split("## Response B\n\n", 1)[1]
        return json.dumps({"rationale": "r", "winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"})
    return f"Reply {request['seed']} to: {user[:30]}" + "!" * (request["seed"] * 3 + int(request["temperature"] * 10))


@pytest.fixture(scope="module")
def demo_like_run(tmp_path_factory):
    from click.testing import CliRunner
    from openai_server import OpenAIServer

    from pipeline.commands.cli import cli

    tmp_path = tmp_path_factory.mktemp("report")
    with OpenAIServer(respond=fake_llm) as openai_server:
        return _pipeline_run(
            tmp_path,
            openai_server,
            lambda *args: CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False),
        )


def _pipeline_run(tmp_path, openai_server, prefab):
    prompts = tmp_path / "prompts.jsonl"
    texts = [
        "How do I reverse a list in Python?",
        "How can I reverse a Python list?",
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Explain photosynthesis simply.",
        "How do I boil an egg?",
        "Why is the sky blue?",
        "Give me three tips for a job interview.",
    ]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    server = {"backend": "openai", "base_url": openai_server.url, "max_retries": 0}
    config = {
        "run": str(tmp_path / "run"),
        "ingest": {"paths": [str(prompts)]},
        "dedup": {"threshold": 0.9, "clusters": 3},
        "generate": {"generators": [{"name": "gen-a", "model": "gen-a", "temperatures": [0.2, 0.9], "n": 2, **server}]},
        "judge": {"judges": [{"name": "judge-a", "model": "judge-a", **server}], "parse_retries": 1},
        "embed": {},
        "pair": {"strategy": "best_vs_worst"},
        "route": {"margin_threshold": 1.0, "audit_share": 0.2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    result = prefab("run", path)
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_pipeline_run_writes_a_self_contained_report_with_plots(demo_like_run, prefab):
    html = (demo_like_run / "report.html").read_text()
    for title in SECTION_TITLES:
        assert f"<h2>{title}</h2>" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 8
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    # nothing to fetch: no external scripts, styles or images
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html and "<link" not in html
    assert "Vendi score" in html and 'alt="route reasons"' in html and 'alt="score distributions"' in html
    assert "chosen shown first" in html  # the judge-consistency matrix
    assert "I cannot rate this." in html  # a failed judgment's raw text, in the failures section
    # the CLI command rewrites it from the run alone
    (demo_like_run / "report.html").unlink()
    result = prefab("report", "--run", demo_like_run)
    assert result.exit_code == 0, result.output
    assert (demo_like_run / "report.html").read_text().count("<section") == html.count("<section")


def test_manifest_holds_the_quality_numbers(demo_like_run):
    stages = json.loads((demo_like_run / "manifest.json").read_text())["stages"]
    assert stages["dedup"]["excluded_as_near_duplicate"] == 1 and stages["dedup"]["clusters"] == 3
    assert stages["embed"]["vendi_score"] > 1 and 0 < stages["embed"]["cluster_entropy"] <= 1
    assert stages["embed"]["cluster_coverage"] == 1.0
    assert stages["judge"]["failed"] >= 1 and stages["judge"]["scored"] >= 1
    assert stages["route"]["pairs"] == stages["pair"]["pairs"] > 0
    assert stages["route"]["human"] + stages["route"]["auto"] == stages["route"]["pairs"]


def test_report_of_an_early_run_shows_what_exists(tmp_path):
    run, _ = make_run(tmp_path / "run", ["one prompt", "another prompt"])
    path, n = report.write_report(run)
    html = open(path).read()
    assert "<h2>Overview</h2>" in html and "<h2>Prompts, dedup and diversity</h2>" in html
    assert "<h2>Judge scores</h2>" not in html and "<h2>Pairs and routing</h2>" not in html
    assert "No failures recorded." in html


def test_sections_from_other_modules_and_a_broken_one(tmp_path, monkeypatch):
    (tmp_path / "extra_report.py").write_text(
        "from pipeline.stages.report import section, table_html\n"
        "def good(run):\n    return section('Extra', table_html([{'k': 1}]))\n"
        "def absent(run):\n    return None\n"
        "def broken(run):\n    raise KeyError('no such column')\n"
        "sections = [good, absent, broken]\n"
    )
    # registered as another installed package would: an entry point in the `prefab.report` group
    info = tmp_path / "extra_report-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-report\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[prefab.report]\nextra = extra_report:sections\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("extra_report", None)
    from pipeline.core import registry

    registry.report_sections.cache_clear()
    try:
        run, _ = make_run(tmp_path / "run", ["a prompt"])
        html = report.render(run)
    finally:
        registry.report_sections.cache_clear()
    assert "<h2>Extra</h2>" in html and "<td>1</td>" in html
    assert "this section failed:</strong> KeyError" in html  # the rest of the report is still there
    assert "<h2>Overview</h2>" in html


def test_report_of_a_missing_run_is_a_clear_error(tmp_path, prefab):
    result = prefab("report", "--run", tmp_path / "nope")
    assert result.exit_code != 0 and "does not exist" in result.output
