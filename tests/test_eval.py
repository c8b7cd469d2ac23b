"""prefab eval: the win-rate arithmetic on known outcomes, the length-controlled win rate, and a tiny real
evaluation (SmolLM2 and a perturbed copy answer on CPU; a scripted judge on the local OpenAI-compatible
server, standing in for a paid judge API, compares them in both orders)."""

import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from labeling_runs import make_run

from pipeline.core.config import ModelSpec
from pipeline.core.errors import InputError, ModelError
from training.eval import evaluate, length_controlled, prompt_score, read_prompts, win_rates
from training.settings import ExportConfig

pytestmark = pytest.mark.training


def test_prompt_score_from_both_orders():
    assert prompt_score("chosen", "chosen") == 1.0  # the candidate wins in both orders
    assert prompt_score("rejected", "rejected") == 0.0
    assert prompt_score("chosen", "rejected") == 0.5  # the judge followed the position: no information
    assert prompt_score("tie", "chosen") == 0.75
    assert prompt_score(None, "chosen") == 1.0 and prompt_score(None, None) is None


def test_win_rates_on_known_outcomes():
    scores = [1, 1, 1, 0, 0.5, 1, 0, 1, 1, 0.5]
    out = win_rates(scores)
    assert out["n"] == 10
    assert (out["win"]["count"], out["tie"]["count"], out["loss"]["count"]) == (6, 2, 2)
    assert out["win"]["rate"] == 0.6 and out["win_rate"]["rate"] == pytest.approx(0.7)
    # Wilson 95% interval of 6/10 (textbook value)
    assert out["win"]["ci"] == pytest.approx([0.3127, 0.8318], abs=1e-4)
    low, high = out["win_rate"]["ci"]
    assert low < 0.7 < high and 0 <= low and high <= 1
    assert win_rates([1.0] * 5)["win_rate"] == {"rate": 1.0, "ci": [1.0, 1.0]}
    assert win_rates([]) == {"n": 0}


def _simulate(intercept: float, length_effect: float, mean_diff: float, n: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = rng.normal(mean_diff, 10.0, n)
    x = np.tanh(d / d.std())
    p = 1 / (1 + np.exp(-(intercept + length_effect * x)))
    return (rng.random(n) < p).astype(float).tolist(), d.tolist()


def test_length_controlled_win_rate_removes_a_length_bias():
    # equally good models, a judge that likes length, a candidate that writes longer: the raw rate is inflated
    y, d = _simulate(intercept=0.0, length_effect=2.0, mean_diff=8.0)
    raw = sum(y) / len(y)
    lc = length_controlled(y, d)
    assert raw > 0.65 and abs(lc["rate"] - 0.5) < 0.06 and lc["ci"][0] < 0.5 < lc["ci"][1]
    assert lc["length_coef"] == pytest.approx(2.0, abs=0.4)
    # a really better candidate keeps its advantage at equal length: sigmoid(1) = 0.731
    y, d = _simulate(intercept=1.0, length_effect=2.0, mean_diff=8.0, seed=1)
    assert length_controlled(y, d)["rate"] == pytest.approx(1 / (1 + math.exp(-1)), abs=0.06)
    # not identifiable: falls back to the raw win rate and says so
    fallback = length_controlled([1.0, 1.0, 1.0], [3.0, 5.0, 9.0])
    assert fallback["rate"] == 1.0 and fallback["ci"] is None and "raw win rate" in fallback["note"]


def test_read_prompts_from_any_export_format(tmp_path):
    run, _ = make_run(tmp_path / "run", n_pairs=3, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    from training.export.stage import export

    export(run, ExportConfig(test_share=0.0))
    expected = [m[:2] for m in run.read("prompts")["messages"].to_list()]
    for name in ("dpo_train.jsonl", "openai_dpo_train.jsonl", "sft_train.jsonl", "sft_pc_train.jsonl"):
        prompts = read_prompts(run.path / "exports" / name)
        assert sorted(map(json.dumps, prompts)) == sorted(json.dumps([dict(x) for x in m]) for m in expected), name
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        '{"prompt": "Say hi."}\n{"prompt": "Say hi."}\n{"messages": [{"role": "user", "content": "Bye?"}]}\n'
    )
    assert read_prompts(plain) == [[{"role": "user", "content": "Say hi."}], [{"role": "user", "content": "Bye?"}]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "where is the prompt?"}\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        read_prompts(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "none.jsonl")


# ---------------------------------------------------------------- a tiny real evaluation


def perturbed_smollm2(out: Path) -> Path:
    """A copy of SmolLM2 with slightly perturbed weights, saved at out: answers that differ from the base's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models.embedded import resolve_llm

    base = resolve_llm("embedded:smollm2")
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02 * p.std())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def candidate_model(tmp_path_factory):
    return perturbed_smollm2(tmp_path_factory.mktemp("candidate") / "model")


def _longer_wins(request: dict) -> str:
    """A judge that prefers the longer response (by words), and says tie on equal length."""
    text = request["messages"][-1]["content"]
    a, b = re.search(r"## Response A\n\n(.*)\n\n## Response B\n\n(.*)\Z", text, re.S).groups()
    winner = "A" if len(a.split()) > len(b.split()) else "B" if len(b.split()) > len(a.split()) else "tie"
    return json.dumps({"rationale": "length", "winner": winner})


def test_tiny_real_eval(candidate_model, openai_server, prefab, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p}) + "\n"
            for p in ("Name a colour.", "What is 2 + 2?", "Write one word about the sea.", "Say hello in French.")
        )
    )
    openai_server.respond = _longer_wins
    out = tmp_path / "eval"
    result = prefab(
        "eval",
        "--base",
        "embedded:smollm2",
        "--candidate",
        candidate_model,
        "--prompts",
        prompts,
        "--judge",
        "length-judge",
        "--judge-base-url",
        openai_server.url,
        "--max-tokens",
        "16",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "eval.json").read_text())
    rows = [json.loads(line) for line in (out / "eval_rows.jsonl").read_text().splitlines()]
    assert summary["judged"] == 4 and openai_server.total == 8  # every prompt judged in both orders
    assert any(r["base"] != r["candidate"] for r in rows)
    for r in rows:  # the candidate is shown first in one order and second in the other: scores map back right
        diff = len(r["candidate"].split()) - len(r["base"].split())
        assert r["score"] == (1.0 if diff > 0 else 0.0 if diff < 0 else 0.5), r
        assert r["verdict_ab"] == r["verdict_ba"]
    assert summary["win_rate"]["rate"] == pytest.approx(sum(r["score"] for r in rows) / 4)
    # asked again: answers and verdicts come from the caches, the judge is not called
    evaluate(
        "embedded:smollm2",
        str(candidate_model),
        read_prompts(prompts),
        ModelSpec(name="length-judge", backend="openai", model="length-judge", base_url=openai_server.url),
        out,
        max_tokens=16,
    )
    assert openai_server.total == 8
    # a judge that always picks the first response is caught by the order swap: every prompt a tie
    openai_server.respond = lambda request: json.dumps({"rationale": "first", "winner": "A"})
    biased = evaluate(
        "embedded:smollm2",
        str(candidate_model),
        read_prompts(prompts),
        ModelSpec(name="first-judge", backend="openai", model="first-judge", base_url=openai_server.url),
        out,
        max_tokens=16,
    )  # same folder: the answers come from its cache
    assert biased["tie"]["count"] == 4 and biased["win_rate"]["rate"] == 0.5


def implicit_margins(policy, reference, path: Path, beta: float, max_length: int) -> list[float]:
    """The oracle: each pair's DPO implicit-reward margin, beta * (log-ratio of chosen - log-ratio of rejected), from
    one forward pass per sequence of each model (the completion's token log-probabilities summed, as DPO defines it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    models = [AutoModelForCausalLM.from_pretrained(m).eval() for m in (policy, reference)]

    def logp(model, ids: list[int], start: int) -> float:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        per_token = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return float(per_token[start - 1 :].sum())

    margins = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        prompt = tokenizer(
            tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        rewards = []
        for side in ("chosen", "rejected"):
            ids = tokenizer(
                tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False), add_special_tokens=False
            )["input_ids"]
            assert ids[: len(prompt)] == prompt
            ids = ids[:max_length]
            rewards.append(beta * (logp(models[0], ids, len(prompt)) - logp(models[1], ids, len(prompt))))
        margins.append(rewards[0] - rewards[1])
    return margins


def test_implicit_reward_accuracy_on_the_test_split(candidate_model, tmp_path):
    """reward_accuracy on the held-out file of an export equals the oracle's: the share of pairs whose margin is
    positive, and the mean margin."""
    from pipeline.models.embedded import resolve_llm
    from training.eval import reward_accuracy
    from training.export.stage import export

    run, _ = make_run(tmp_path / "run", n_pairs=6, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    export(run, ExportConfig(test_share=0.5, formats=["trl-dpo"]))
    train, test = (run.path / "exports" / f"dpo_{split}.jsonl" for split in ("train", "test"))
    held_out = [json.loads(line)["pair_id"] for line in test.read_text().splitlines()]
    assert len(held_out) == 3 and not set(held_out) & {
        json.loads(line)["pair_id"] for line in train.read_text().splitlines()
    }

    same = reward_accuracy("embedded:smollm2", "embedded:smollm2", test, max_length=64)
    assert same["pairs"] == 3 and same["accuracy"] == 0.0 and same["margin"] == 0.0  # policy == reference: no reward
    other = reward_accuracy(str(candidate_model), "embedded:smollm2", test, max_length=64)
    margins = implicit_margins(str(candidate_model), resolve_llm("embedded:smollm2"), test, beta=0.1, max_length=64)
    assert other["pairs"] == 3 and min(map(abs, margins)) > 1e-3, (
        margins
    )  # no margin so small that float noise could flip it
    assert other["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3, abs=1e-6), (other, margins)
    assert other["margin"] == pytest.approx(sum(margins) / 3, abs=1e-4), (other, margins)


def test_eval_bad_input(prefab, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    result = prefab("eval", "--base", "embedded:smollm2", "--candidate", tmp_path / "no-model", "--prompts", prompts)
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output
    result = prefab(
        "eval", "--base", "embedded:smollm2", "--candidate", "embedded:smollm2", "--prompts", tmp_path / "none.jsonl"
    )
    assert result.exit_code != 0 and "does not exist" in result.output
    with pytest.raises(ModelError):
        from pipeline.models.checkpoints import fingerprint

        fingerprint(str(tmp_path / "missing-dir" / "model"))
