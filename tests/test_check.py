"""`prefab check CONFIG` against the real test server acting like servers that lack what a run needs: each lack is
found before a run, named with its fix, and makes the command exit non-zero; what a run can live with is a warning."""

import json

import pytest
import yaml
from openai_server import OpenAIServer, structured_respond


def write_config(tmp_path, server_url, *, judge: dict | None = None, generator: dict | None = None, **sections) -> str:
    model = {
        "backend": "openai",
        "model": "fake-model",
        "base_url": server_url,
        "api_key_env": "CHECK_KEY",
        "timeout": 10,
    }
    config = {
        "run": str(tmp_path / "run"),
        "ingest": {"paths": ["prompts.jsonl"]},
        "generate": {"generators": [{"name": "gen", **model, **(generator or {})}]},
        **sections,
    }
    if judge is not None:
        settings = {k: v for k, v in judge.items() if k != "model"}
        config["judge"] = {
            "judges": [{"name": "judge", **model, **judge.get("model", {})}],
            "aspects": [{"name": "helpfulness"}],
            **settings,
        }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("CHECK_KEY", "right-key")
    monkeypatch.delenv("ARGILLA_API_URL", raising=False)


def digit_or_schema(request):
    """A judge that answers the rubric's schema when asked for it, and a digit to a one-token question."""
    return "4" if request.get("max_tokens") == 1 else structured_respond(request)


def warnings(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("warning: ")]


def problems(result) -> list[str]:
    """The problem lines the command printed (one per failed check, with its fix)."""
    return [line.strip() for line in result.output.splitlines() if "; fix: " in line]


def test_a_server_with_everything_passes(prefab, tmp_path):
    with OpenAIServer(api_key="right-key", models=["fake-model"], respond=digit_or_schema) as server:
        result = prefab("check", write_config(tmp_path, server.url, judge={"pairwise": True, "logprobs": True}))
        assert result.exit_code == 0, result.output
        assert not warnings(result) and "problem" not in result.output
        asked = [json.dumps(b, sort_keys=True) for b in server.bodies]
    # the judge's own requests were asked: its rubric schema and a logprobs question
    assert any('"json_schema"' in b and '"rubric"' in b for b in asked)
    assert any('"logprobs": true' in b for b in asked)
    assert server.statuses == {"200": len(asked)}


def test_no_json_schema_fails_and_names_the_fallback(prefab, tmp_path):
    with OpenAIServer(json_schema=False, respond=structured_respond) as server:
        result = prefab("check", write_config(tmp_path, server.url, judge={}))
    assert result.exit_code != 0
    [line] = problems(result)
    assert "judge judge" in line and "structured output" in line and "HTTP 400" in line
    assert "structured_output: false" in line and "asks for the JSON in the prompt" in line


def test_a_server_that_ignores_the_schema_is_a_warning(prefab, tmp_path):
    """The default test server answers plain text whatever the response_format: the run works,
    parsing and asking again."""
    with OpenAIServer() as server:
        result = prefab("check", write_config(tmp_path, server.url, judge={}))
    assert result.exit_code == 0, result.output
    [line] = warnings(result)
    assert (
        "judge judge" in line
        and "structured output" in line
        and "ignores the schema" in line
        and "asks again up to 2 times" in line
    )


def test_no_logprobs_fails_where_the_judge_scores_by_them(prefab, tmp_path):
    with OpenAIServer(logprobs=False) as server:
        result = prefab("check", write_config(tmp_path, server.url, judge={"scoring": "logprobs"}))
    assert result.exit_code != 0
    [line] = problems(result)
    assert "logprobs" in line and "none in the answer" in line and "scoring: json" in line


def test_no_logprobs_for_pairwise_confidence_is_a_warning(prefab, tmp_path):
    with OpenAIServer(logprobs=False, respond=structured_respond) as server:
        result = prefab("check", write_config(tmp_path, server.url, judge={"logprobs": True}))
    assert result.exit_code == 0, result.output
    [line] = warnings(result)
    assert "logprobs" in line and "two verdicts alone" in line


def test_another_model_name_fails_with_the_served_name(prefab, tmp_path):
    with OpenAIServer(models=["SmolLM2-135M-Instruct"]) as server:
        result = prefab("check", write_config(tmp_path, server.url))
        assert server.statuses == {"404": 1}  # one probe, then nothing more is asked of a model the server lacks
    assert result.exit_code != 0
    [line] = problems(result)
    assert "generator gen" in line and "model served" in line and "'fake-model'" in line
    assert "fix: set `model: SmolLM2-135M-Instruct`" in line


def test_a_rejected_key_fails_before_any_completion(prefab, tmp_path, monkeypatch):
    monkeypatch.setenv("CHECK_KEY", "wrong-key")
    with OpenAIServer(api_key="right-key") as server:
        result = prefab("check", write_config(tmp_path, server.url, judge={}))
        assert server.total == 0  # /v1/models refused it: no chat completion was asked
    assert result.exit_code != 0
    lines = problems(result)
    assert len(lines) == 2  # the generator and the judge
    assert all(
        "key accepted" in line and "HTTP 401" in line and "fix: set CHECK_KEY to a key this server accepts" in line
        for line in lines
    )


def test_an_unset_key_variable_and_an_unreachable_server(prefab, tmp_path, monkeypatch):
    monkeypatch.delenv("CHECK_KEY")
    with OpenAIServer() as server:
        url = server.url
    config = write_config(tmp_path, url, judge={"model": {"api_key_env": None}})
    monkeypatch.setenv("OPENAI_API_KEY", "any")
    result = prefab("check", config)
    assert result.exit_code != 0
    generator, judge = problems(result)
    assert "CHECK_KEY is not set" in generator and "fix: export CHECK_KEY=" in generator
    assert "reachable" in judge and "ConnectError" in judge and "fix: start the server, or correct `base_url:`" in judge


def test_batch_api(prefab, tmp_path):
    with OpenAIServer(batch_api=True) as server:
        ok = prefab("check", write_config(tmp_path, server.url, generator={"mode": "batch"}))
    with OpenAIServer(batch_api=False) as server:
        missing = prefab("check", write_config(tmp_path, server.url, generator={"mode": "batch"}))
    assert ok.exit_code == 0, ok.output
    assert missing.exit_code != 0
    [line] = problems(missing)
    assert "batch API" in line and "has no Batch API" in line and "mode: realtime" in line


def test_a_local_model_that_does_not_load(prefab, tmp_path):
    with OpenAIServer() as server:
        config = write_config(
            tmp_path, server.url, judge={"reward_models": [{"name": "rm", "model": str(tmp_path / "no-such-model")}]}
        )
        result = prefab("check", config)
    assert result.exit_code != 0
    [line] = problems(result)
    assert "reward model rm" in line and "does not exist" in line


def test_a_labeling_server_that_is_down(prefab, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFAB_LABELING_HOME", str(tmp_path / "labeling"))
    with OpenAIServer() as server:
        with_labeling = prefab("check", write_config(tmp_path, server.url, labeling={"dataset": "x"}))
        without = prefab("check", write_config(tmp_path, server.url))
    assert with_labeling.exit_code != 0
    [line] = problems(with_labeling)
    assert line.startswith("labeling server") and "fix: prefab labeling up" in line
    assert without.exit_code == 0, without.output


@pytest.mark.server
def test_the_labeling_check_asks_the_server_the_run_pushed_to(prefab, tmp_path, monkeypatch, labeling_server):
    """A run that pushed records its labeling home, and push and pull go back to that server; so does the check, in
    a shell whose own default home never started a server."""
    from pipeline.core.store import Run

    for name in ("PREFAB_HOME", "PREFAB_LABELING_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)  # no project .prefab/ here: the default home is under HOME
    monkeypatch.setenv("COLUMNS", "200")  # the table's URL cell unfolded
    with OpenAIServer() as server:
        config = write_config(tmp_path, server.url, labeling={"dataset": "x"})
        before = prefab("check", config)
        Run(tmp_path / "run").record_stage("push", labeling_home=str(labeling_server["home"]))
        after = prefab("check", config)
    assert before.exit_code != 0 and "never started here" in before.output
    assert after.exit_code == 0, after.output
    [row] = [line for line in after.output.splitlines() if "labeling server" in line]
    assert labeling_server["url"] in row and "ok" in row
