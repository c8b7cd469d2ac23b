"""Config validation: every mistake is reported with file, line, key and a hint before any work."""

import pytest

from pipeline.core.config import config_model, load_config
from pipeline.core.errors import ConfigError

BASE = """run: {run}
ingest:
  paths: [data/prompts/single_turn.jsonl]
generate:
  generators:
    - backend: transformers
      temperatures: [0.3, 0.7]
"""


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text.replace("{run}", str(tmp_path / "run")))
    return path


def test_demo_config_is_valid():
    config = load_config("data/configs/demo.yaml")
    assert config.generate.generators[0].model == "embedded:smollm2"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            BASE.replace("temperatures", "temperaturs"),
            ["line 7", "generate.generators.0.temperaturs", "did you mean 'temperatures'"],
        ),
        (BASE.replace("[0.3, 0.7]", "hot"), ["line 7", "generate.generators.0.temperatures"]),
        (BASE.replace("[0.3, 0.7]", "[0.3, 7]"), ["outside 0..2"]),
        (BASE.replace("ingest:\n  paths: [data/prompts/single_turn.jsonl]\n", ""), ["ingest: required key is missing"]),
        (BASE + "jduge: null\n", ["jduge: unknown key", "did you mean 'judge'"]),
        (
            BASE.replace("backend: transformers", "backend: openai\n      model: gpt\n      api_key_env: sk-abcdef123"),
            ["looks like a key itself"],
        ),
        ("run: [unclosed\n", ["not valid YAML"]),
        # names that key tables and ids: a second one would silently merge with the first
        (
            BASE + "    - backend: transformers\n      temperatures: [1.0]\n",
            [
                "line 5",
                "generate.generators",
                "generators[0] and generators[1] share the name 'embedded:smollm2'",
                "`name:`",
            ],
        ),
        (
            BASE.replace("    - backend", "    - name: g\n      model: ./a\n      backend")
            + "    - name: g\n      model: ./b\n",
            ["generators[0] and generators[1] share the name 'g'"],
        ),
        (
            BASE.replace("[0.3, 0.7]", "[0.3, 0.7, 0.3]"),
            ["line 7", "temperatures[0] and temperatures[2] share the temperature 0.3", "n:"],
        ),
        (
            BASE + "judge:\n  judges:\n    - name: j\n    - name: j\n      model: ./other\n",
            ["line 9", "judges[0] and judges[1] share the name 'j'"],
        ),
        (
            BASE + "judge:\n  aspects:\n    - name: a\n    - name: a\n",
            ["judge.aspects", "aspects[0] and aspects[1] share the name 'a'"],
        ),
    ],
)
def test_config_errors(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "cfg.yaml" in message
    for fragment in expected:
        assert fragment in message


def test_cli_reports_config_error_without_traceback(tmp_path, prefab):
    path = write(tmp_path, BASE.replace("temperatures", "temperaturs"))
    result = prefab("run", path)
    assert result.exit_code == 2
    assert "did you mean 'temperatures'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_missing_config_file(prefab, tmp_path):
    result = prefab("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_distinct_names_are_accepted(tmp_path):
    text = BASE + "    - name: second\n      temperatures: [0.3]\njudge:\n  judges:\n    - name: j1\n    - name: j2\n"
    config = load_config(write(tmp_path, text))
    assert [g.label for g in config.generate.generators] == ["embedded:smollm2", "second"]


@pytest.mark.parametrize("path", ["data/configs/demo.yaml", "defaults"])
def test_the_run_snapshot_gives_back_the_config_exactly(tmp_path, path):
    """A stage run alone reads the config snapshot in the manifest: every value must come back as it was, type and all
    (a default 5 that came back as 5.0 changed the judge's rubric text, so `prefab judge --run` repaid every call)."""
    import json

    from pipeline.core.runner import snapshot
    from pipeline.models.llm import cache_key
    from pipeline.stages.judge import scoring_requests

    if path == "defaults":
        path = write(
            tmp_path, BASE + "judge: {judges: [{backend: openai, model: m}]}\nembed: {}\npair: {}\nroute: {}\n"
        )
    config = load_config(path)
    data = snapshot(config)
    data.pop("source")
    again = config_model().model_validate(json.loads(json.dumps(data)))
    assert json.dumps(again.model_dump(mode="json"), sort_keys=True) == json.dumps(
        config.model_dump(mode="json"), sort_keys=True
    )
    items = [([{"role": "user", "content": "hi"}], "hello")]
    for a, b in zip(config.judge.judges, again.judge.judges, strict=True):
        keys = [
            [cache_key(spec, r) for r in scoring_requests(spec, items, c.judge.aspects, c.judge)]
            for spec, c in ((a, config), (b, again))
        ]
        assert keys[0] == keys[1]
