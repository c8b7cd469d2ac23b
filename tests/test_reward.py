"""Reward models as scorers (pipeline/models/reward.py): a sequence-classification model made from the embedded SmolLM2
(its score head seeded, so rewards are fixed but not trained) scores candidates in a run; its scores agree with a
direct, one-at-a-time forward pass; pairs are made by reward difference; it is calibrated on gold like a judge;
a causal LM given as a reward model is refused."""

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.core.config import RewardModelSpec, config_model
from pipeline.core.errors import ModelError
from pipeline.core.runner import run_pipeline
from pipeline.core.store import Run

PROMPTS = {
    "Name a colour.": ("Blue.", "I cannot help with that."),
    "What is 2 + 2?": ("2 + 2 = 4.", "It is 5."),
    "Say hello in French.": ("Bonjour !", "Hello."),
}
GOLD = [{"prompt": p, "chosen": a, "rejected": b} for p, (a, b) in PROMPTS.items()] + [
    {"prompt": "Give me a fruit.", "chosen": "An apple.", "rejected": "A chair."}
]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """The embedded SmolLM2 with a one-output score head (seeded): a reward model in form, untrained."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.models.embedded import resolve_llm

    base = resolve_llm("embedded:smollm2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = tmp_path_factory.mktemp("rm") / "reward-model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def direct_reward(path: str, prompt: str, response: str) -> float:
    """One text at a time, no padding: what the batched scorer must agree with."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        return float(model(**ids).logits[0, 0])


@pytest.fixture(scope="module")
def direct(reward_model):
    texts = {(p, r) for p, pair in PROMPTS.items() for r in pair} | {
        (g["prompt"], g[k]) for g in GOLD for k in ("chosen", "rejected")
    }
    return {key: direct_reward(reward_model, *key) for key in texts}


def test_a_causal_lm_is_not_taken_for_a_reward_model():
    from pipeline.models.reward import load

    with pytest.raises(ModelError, match="is not a reward model.*ForCausalLM") as e:
        load(RewardModelSpec(model="embedded:smollm2"))
    assert "num_labels 1" in e.value.hint


def test_batched_scores_match_one_at_a_time_and_come_from_the_cache_after(reward_model, direct, tmp_path, monkeypatch):
    from pipeline.core.cache import CallCache
    from pipeline.models import reward

    items = [([{"role": "user", "content": p}], r) for p, r in sorted(direct)]
    cache = CallCache(tmp_path / "cache.sqlite")
    spec = RewardModelSpec(model=reward_model, batch_size=3)
    got = [row["overall"] for row in reward.reward_scores(spec, items, cache, "reward")]
    assert got == pytest.approx([direct[key] for key in sorted(direct)], abs=1e-4)
    assert len({round(g, 4) for g in got}) > len(got) // 2  # rewards that differ: a test that could fail

    monkeypatch.setattr(reward, "load", lambda spec: pytest.fail("scored again"))
    assert [row["overall"] for row in reward.reward_scores(spec, items, cache, "reward")] == got
    cache.close()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_run_pairs_by_reward_and_calibrates_the_reward_model_on_gold(reward_model, direct, tmp_path, fake_backend):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD)
    fake_backend.respond = lambda body: PROMPTS[body["messages"][-1]["content"]][body["seed"]]
    config = config_model().model_validate(
        {
            "run": str(tmp_path / "run"),
            "ingest": {"paths": [str(src)]},
            "generate": {
                "generators": [{"name": "gen", "backend": "fake", "model": "gen-model", "temperatures": [0.7], "n": 2}]
            },
            "judge": {"reward_models": [{"name": "rm", "model": reward_model, "batch_size": 4}], "pairwise": False},
            "pair": {},
            "calibrate": {"gold": [str(gold)]},
            "route": {"audit_share": 0},
        }
    )
    run = Run(config.run)
    run_pipeline(config, run)

    judgments = run.read("judgments").join(
        run.read("candidates").select("candidate_id", "prompt_id", "text"), on="candidate_id"
    )
    assert set(judgments["judge"]) == {"rm"}
    prompt_of = {pid: m[-1]["content"] for pid, m in run.read("prompts").select("prompt_id", "messages").iter_rows()}
    for row in judgments.iter_rows(named=True):
        assert row["overall"] == pytest.approx(direct[(prompt_of[row["prompt_id"]], row["text"])], abs=1e-4)

    text = dict(run.read("candidates").select("candidate_id", "text").iter_rows())
    pairs = run.read("pairs")
    assert pairs.height == len(PROMPTS)
    for row in pairs.iter_rows(named=True):
        prompt = prompt_of[row["prompt_id"]]
        high, low = sorted(PROMPTS[prompt], key=lambda r: -direct[(prompt, r)])
        assert (text[row["chosen_id"]], text[row["rejected_id"]]) == (high, low)  # the higher reward is chosen
        assert row["margin"] == pytest.approx(direct[(prompt, high)] - direct[(prompt, low)], abs=1e-4)

    calibration = run.read("calibration").filter(
        (pl.col("judge") == "rm") & (pl.col("method") == "pointwise") & (pl.col("source") == "all")
    )
    right = sum(direct[(g["prompt"], g["chosen"])] > direct[(g["prompt"], g["rejected"])] for g in GOLD)
    assert calibration.select("n", "accuracy").row(0) == (len(GOLD), pytest.approx(right / len(GOLD)))


@pytest.mark.training
def test_prefab_trains_a_reward_model_on_an_export_and_a_run_scores_with_it(tmp_path, fake_backend):
    """`prefab train reward` (TRL's RewardTrainer) on a real export: 2 steps on CPU, loss and accuracy logged, weights
    changed; the saved folder is then a reward model a run scores candidates with."""
    import subprocess
    import sys

    import torch
    from labeling_runs import make_run
    from safetensors.torch import load_file

    from pipeline.models.embedded import resolve_llm
    from training.export.stage import export
    from training.settings import ExportConfig

    source, _ = make_run(tmp_path / "source", n_pairs=4, human_every=100)
    source.write("pairs", source.read("pairs").with_columns(route=pl.lit("auto")))
    export(source, ExportConfig(test_share=0.25))
    out = tmp_path / "rm"
    sets = [
        f"--set={k}={v}"
        for k, v in {
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "max_length": 128,
            "learning_rate": 1e-4,
            "save_strategy": "no",
            "logging_steps": 1,
        }.items()
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.commands.cli",
            "train",
            "reward",
            "--data",
            str(source.path / "exports" / "dpo_train.jsonl"),
            "--eval-data",
            str(source.path / "exports" / "dpo_test.jsonl"),
            "--output-dir",
            str(out),
            *sets,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert metrics["steps"] == 2 and len(losses) == 2 and all(l > 0 for l in losses)  # noqa: E741
    assert metrics["accuracy"] is not None and metrics["eval_accuracy"] is not None
    trained, base = (
        load_file(str(out / "model.safetensors")),
        load_file(str(Path(resolve_llm("embedded:smollm2")) / "model.safetensors")),
    )
    body = [k for k in base if k in trained]
    assert sum(not torch.equal(trained[k], base[k]) for k in body) > 100 and "score.weight" in trained

    # the trained model scores a run
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    fake_backend.respond = lambda body: PROMPTS[body["messages"][-1]["content"]][body["seed"]]
    config = config_model().model_validate(
        {
            "run": str(tmp_path / "run"),
            "ingest": {"paths": [str(src)]},
            "generate": {
                "generators": [{"name": "gen", "backend": "fake", "model": "gen-model", "temperatures": [0.7], "n": 2}]
            },
            "judge": {"reward_models": [{"name": "trained", "model": str(out)}], "pairwise": False},
            "pair": {},
        }
    )
    run = Run(config.run)
    run_pipeline(config, run)
    judgments = run.read("judgments").join(run.read("candidates").select("candidate_id", "text"), on="candidate_id")
    prompt_of = {a: p for p, pair in PROMPTS.items() for a in pair}
    for row in judgments.iter_rows(named=True):
        assert row["judge"] == "trained" and row["overall"] == pytest.approx(
            direct_reward(str(out), prompt_of[row["text"]], row["text"]), abs=1e-4
        )
    assert run.read("pairs").height == len(PROMPTS)
