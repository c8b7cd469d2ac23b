"""Iterative on-policy DPO: each round a sub-run, each round's trained model the next round's generator.

The end-to-end test generates with the embedded SmolLM2 on CPU and trains it for real; the judge (a paid API
in practice) is a scripted one on the local OpenAI-compatible server."""

import json
from pathlib import Path

import pytest

from pipeline.core.config import Config, config_model

pytestmark = pytest.mark.training


def rounds_config(tmp_path: Path, judge_url: str, rounds: int = 2) -> Config:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p}) + "\n"
            for p in ("Name a fruit.", "What is 3 + 4?", "Say something about the sky.", "Give me a verb.")
        )
    )
    return config_model().model_validate(
        {
            "run": str(tmp_path / "rounds"),
            "ingest": {"paths": [str(prompts)]},
            "generate": {
                "generators": [
                    {
                        "name": "smol",
                        "backend": "transformers",
                        "model": "embedded:smollm2",
                        "temperatures": [0.7, 1.3],
                        "n": 1,
                        "max_tokens": 12,
                        "batch_size": 8,
                    }
                ]
            },
            "judge": {
                "judges": [
                    {
                        "name": "judge",
                        "backend": "openai",
                        "model": "judge-model",
                        "base_url": judge_url,
                        "max_retries": 0,
                    }
                ],
                "parse_retries": 0,
            },
            "pair": {"strategy": "best_vs_worst"},
            "route": {"margin_threshold": 0.0, "audit_share": 0.0},
            "export": {"sources": ["auto"], "test_share": 0.0, "drop_equal": True},
            "train": {
                "method": "dpo",
                "rounds": rounds,
                "overrides": {
                    "max_steps": 1,
                    "per_device_train_batch_size": 1,
                    "max_length": 48,
                    "save_strategy": "no",
                    "learning_rate": 1e-4,
                },
            },
        }
    )


def test_round_config_swaps_in_the_policy(tmp_path):
    from training.rounds import round_config

    config = rounds_config(tmp_path, "http://127.0.0.1:1/v1")
    first = round_config(config, 1, None)
    assert first.run == str(Path(config.run) / "round-1") and first.generate.generators[0].model == "embedded:smollm2"
    assert first.train.rounds == 1 and "model" not in first.train.overrides
    second = round_config(config, 2, "/models/round-1")
    spec = second.generate.generators[0]
    assert (spec.model, spec.backend, spec.name, spec.temperatures) == (
        "/models/round-1",
        "transformers",
        "policy-round-2",
        [0.7, 1.3],
    )
    assert second.train.overrides["model"] == "/models/round-1" and second.train.overrides["max_steps"] == 1
    assert config.generate.generators[0].model == "embedded:smollm2"  # the parent config is untouched


def _judge(request: dict) -> str:
    """Pairwise: the longer response wins. Rubric: a score that follows the response's length."""
    content = request["messages"][-1]["content"]
    if "## Response A" in content:
        a = content.split("## Response A\n\n", 1)[1].split("\n\n## Response B\n\n")[0]
        b = content.split("## Response B\n\n", 1)[1]
        return json.dumps({"rationale": "r", "winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"})
    response = content.split("## Response to rate\n\n", 1)[1] if "## Response to rate" in content else content
    score = 1 + min(4, len(response) // 15)
    names = ("helpfulness", "honesty", "instruction_following", "truthfulness")
    return json.dumps({n: {"rationale": "r", "score": score} for n in names})


@pytest.mark.slow
def test_two_rounds_on_policy(tmp_path, openai_server):
    import torch
    from safetensors.torch import load_file

    from pipeline.core.store import Run
    from training.rounds import run_rounds

    openai_server.respond = _judge
    config = rounds_config(tmp_path, openai_server.url)
    history = run_rounds(config)
    assert [h["round"] for h in history] == [1, 2]
    one, two = Run(history[0]["run"]), Run(history[1]["run"])
    assert one.path.name == "round-1" and two.path.name == "round-2"
    # round 2 generated with round 1's trained model and trained on from it
    assert set(two.read("candidates")["model"].to_list()) == {"policy-round-2"}
    assert two.manifest()["config"]["generate"]["generators"][0]["model"] == history[0]["trained"]
    assert two.stage_info("train")["base_model"] == history[0]["trained"]
    w1 = load_file(str(Path(history[0]["trained"]) / "model.safetensors"))
    w2 = load_file(str(Path(history[1]["trained"]) / "model.safetensors"))
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert Run(config.run).manifest()["rounds"] == history
    # running again finds every stage of every round complete: no model or judge call
    calls = openai_server.total
    assert run_rounds(config) == history and openai_server.total == calls
