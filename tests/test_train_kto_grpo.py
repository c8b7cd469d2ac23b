"""KTO and GRPO: the kto and grpo exports read back with `datasets` and trained 2 steps each on CPU with the
embedded SmolLM2 (loss logged, weights changed), GRPO's reward is the run's verifier (math-verify, the code
sandbox), and bad input is a clear error naming the file and line."""

import json
import math
from pathlib import Path

import polars as pl
import pytest
from labeling_runs import make_run
from test_export import add_second_pairs
from test_train import changed_tensors, losses

from pipeline.core.errors import ConfigError, ExportError
from training.export.stage import export
from training.formats import kto_weights
from training.settings import ExportConfig

pytestmark = pytest.mark.training

KTO_TINY = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "max_length": 48,
    "learning_rate": 1e-4,
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
}
# 2 prompts a step, 2 completions each; seed 0 samples a right and a wrong answer in one group, so the advantage is
# not zero and the weights move (a step where every completion scores the same has no gradient)
GRPO_TINY = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "num_generations": 2,
    "max_completion_length": 8,
    "learning_rate": 1e-4,
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
}
QUESTIONS = [
    ("What is 10 - 9?", "1"),
    ("What is 12 - 5?", "7"),
    ("What is 3 + 4?", "7"),
    ("What is 6 - 2?", "4"),
    ("What is 2 + 2?", "4"),
    ("What is 9 - 3?", "6"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """6 prompts, each a small sum with its reference answer; two pairs per prompt sharing the chosen side, so the
    kto rows are unbalanced (6 desirable, 12 undesirable)."""
    run, _ = make_run(tmp_path_factory.mktemp("kto-grpo") / "run", n_pairs=6, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    add_second_pairs(run)
    prompts = run.read("prompts")
    run.write(
        "prompts",
        prompts.with_columns(
            messages=pl.Series([[{"role": "user", "content": q}] for q, _ in QUESTIONS]),
            reference_answer=pl.Series([a for _, a in QUESTIONS]),
        ),
    )
    counts = export(run, ExportConfig(test_share=0.25, formats=["trl-dpo", "kto", "grpo"]))
    run.counts = counts
    return run


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kto_export_reads_back_unpaired_and_weighted(run):
    from datasets import load_dataset

    out = run.path / "exports"
    ds = load_dataset("json", data_files={s: str(out / f"kto_{s}.jsonl") for s in ("train", "test")})
    rows = list(ds["train"]) + list(ds["test"])
    assert {"prompt", "completion", "label"} <= set(ds["train"].column_names)
    assert all(isinstance(r["label"], bool) for r in rows)
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["completion"][0]["role"] == "assistant"
    # one row per candidate: the shared chosen side once, each rejected side once
    assert len({r["candidate_id"] for r in rows}) == len(rows) == 18
    assert (
        sum(r["label"] for r in rows) == 6
        and run.counts["kto"]["desirable"] == 6
        and run.counts["kto"]["undesirable"] == 12
    )
    # the same split by prompt as the pairs
    splits = json.loads((out / "splits.json").read_text())
    dpo_test = {r["prompt_id"] for r in read(out / "dpo_test.jsonl")}
    assert {r["prompt_id"] for r in ds["test"]} == dpo_test and set(splits["test"]) >= dpo_test
    assert not {r["prompt_id"] for r in ds["train"]} & dpo_test
    # the card states the counts and TRL's weights for the train split (n_d < n_u: desirable raised, ratio 7/6)
    n_d, n_u = run.counts["kto"]["train_desirable"], run.counts["kto"]["train_undesirable"]
    d_w, u_w = kto_weights(n_d, n_u)
    assert u_w == 1.0 and 1 <= d_w * n_d / (u_w * n_u) <= 4 / 3 and d_w == pytest.approx(7 / 6 * n_u / n_d, abs=1e-3)
    card = (out / "README.md").read_text()
    assert "## KTO (unpaired)" in card and f"desirable (chosen, label true): 6 rows ({n_d} train)" in card
    assert f"`desirable_weight: {d_w}`" in card and "config_name: kto" in card
    assert kto_weights(10, 10) == (1.0, 1.0) and kto_weights(12, 10) == (1.0, 1.0)  # within [1, 4/3]: unchanged
    assert kto_weights(30, 10) == (1.0, round(3 * 6 / 7, 3))


def test_grpo_export_reads_back_with_ground_truth(run):
    from datasets import load_dataset

    out = run.path / "exports"
    ds = load_dataset("json", data_files={s: str(out / f"grpo_{s}.jsonl") for s in ("train", "test")})
    assert {"prompt", "reference_answer", "tests"} <= set(ds["train"].column_names)
    rows = list(ds["train"]) + list(ds["test"])
    assert sorted((r["prompt"][-1]["content"], r["reference_answer"]) for r in rows) == sorted(QUESTIONS)
    dpo_test = {r["prompt_id"] for r in read(out / "dpo_test.jsonl")}
    assert {r["prompt_id"] for r in ds["test"]} == dpo_test
    assert "## GRPO prompt set" in (out / "README.md").read_text()


def test_kto_trains_two_steps_with_balanced_weights(run, tmp_path, capsys):
    from training.train import train_kto

    out = tmp_path / "kto"
    exports = run.path / "exports"
    metrics = train_kto(
        exports / "kto_train.jsonl", None, {**KTO_TINY, "output_dir": str(out)}, eval_data=exports / "kto_test.jsonl"
    )
    assert metrics["steps"] == 2 and len(losses(out)) == 2 and all(math.isfinite(l) for l in losses(out))  # noqa: E741
    n_d, n_u = run.counts["kto"]["train_desirable"], run.counts["kto"]["train_undesirable"]
    assert (metrics["desirable_weight"], metrics["undesirable_weight"]) == kto_weights(n_d, n_u) != (1.0, 1.0)
    assert "eval_loss" in metrics and (out / "trainer_log.jsonl").exists()
    assert changed_tensors(out, _base()) > 100
    assert "desirable_weight" in capsys.readouterr().err


def test_grpo_trains_two_steps_on_the_verifier_reward(run, tmp_path):
    from training.train import train_grpo

    out = tmp_path / "grpo"
    metrics = train_grpo(run.path / "exports" / "grpo_train.jsonl", None, {**GRPO_TINY, "output_dir": str(out)})
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert metrics["steps"] == 2 and len(steps) == 2 and all(math.isfinite(h["loss"]) for h in steps)
    assert all("rewards/verifier/mean" in h for h in steps)  # the reward function ran on every step's completions
    assert any(h["reward_std"] > 0 for h in steps), steps  # a group with a right and a wrong answer
    assert changed_tensors(out, _base()) > 100


def _base() -> dict:
    from safetensors.torch import load_file

    from pipeline.models.embedded import resolve_llm

    return load_file(str(Path(resolve_llm("embedded:smollm2")) / "model.safetensors"))


# ---------------------------------------------------------------- the reward


def test_verifier_scores_math_and_code():
    from training.rewards import verifier

    chat = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    assert verifier(
        None,
        [chat("10 - 9 = 1, so the answer is $\\boxed{1}$."), chat("The answer is 2.")],
        reference_answer=["1", "1"],
    ) == [1.0, 0.0]
    assert verifier(None, ["I cannot say.", "3/4"], reference_answer=["0.75", "$\\frac{3}{4}$"]) == [0.0, 1.0]
    tests = "def test_double():\n    assert double(2) == 4\n\ndef test_zero():\n    assert double(0) == 0\n"
    good = "Here it is:\n```python\ndef double(x):\n    return 2 * x\n```\nDone."
    bad = "```python\ndef double(x):\n    return x - 1\n```"
    scores = verifier(None, [chat(good), chat(bad), chat("no code at all")], tests=[tests] * 3)
    assert scores == [1.0, 0.0, 0.0]
    assert verifier(None, ["def double(x): return x"], tests=[tests]) == [0.5]  # no fence: the whole text is the code
    assert verifier(None, ["```py\ndef double(x):\n    return x + x\n"], tests=[tests]) == [
        1.0
    ]  # an unclosed block runs to the end
    # a row with no ground truth has no reward (None: GRPOTrainer leaves it out),
    # a reference that does not parse neither
    assert verifier(None, ["4", "4"], reference_answer=[None, "\\frac{"], tests=[None, None]) == [None, None]


# ---------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error(run, prefab, tmp_path):
    def fails(*args, expect):
        result = prefab("train", *args)
        assert result.exit_code != 0, result.output
        for text in expect:
            assert text in result.output, result.output
        assert "Traceback" not in result.output
        return result

    exports = run.path / "exports"
    empty = tmp_path / "kto_train.jsonl"
    empty.write_text("")
    fails("kto", "--data", empty, expect=[str(empty), "holds no examples"])
    rows = read(exports / "kto_train.jsonl")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "label": "false"}) + "\n")
    fails("kto", "--data", labels, expect=[f"{labels}:2", "label", "valid boolean"])
    fails("kto", "--data", exports / "dpo_train.jsonl", expect=["not a kto training format", "--format kto"])
    only = tmp_path / "only_good.jsonl"
    only.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"]))
    fails("kto", "--data", only, expect=["only desirable rows", "KTO needs both"])
    fails("kto", "--data", exports / "kto_train.jsonl", "--set", "per_device_train_batch_size=1", expect=["at least 2"])

    grpo = read(exports / "grpo_train.jsonl")
    bad_ref = tmp_path / "grpo_bad_ref.jsonl"
    bad_ref.write_text(json.dumps(grpo[0]) + "\n" + json.dumps({**grpo[1], "reference_answer": "\\frac{"}) + "\n")
    fails("grpo", "--data", bad_ref, expect=[f"{bad_ref}:2", "does not parse"])
    bad_tests = tmp_path / "grpo_bad_tests.jsonl"
    bad_tests.write_text(json.dumps({**grpo[0], "reference_answer": None, "tests": "assert f(1) ==\n"}) + "\n")
    fails("grpo", "--data", bad_tests, expect=[f"{bad_tests}:1", "do not compile"])
    no_truth = tmp_path / "grpo_no_truth.jsonl"
    no_truth.write_text(json.dumps({**grpo[0], "reference_answer": None}) + "\n")
    fails("grpo", "--data", no_truth, expect=[f"{no_truth}:1", "neither a reference_answer nor tests"])
    fails(
        "grpo",
        "--data",
        exports / "grpo_train.jsonl",
        "--set",
        "num_generations=3",
        expect=["divisible by num_generations"],
    )


def test_grpo_export_without_ground_truth_fails_and_keeps_the_previous_export(tmp_path):
    run, _ = make_run(tmp_path / "run", n_pairs=3, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    export(run, ExportConfig(test_share=0.0))
    before = (run.path / "exports" / "dpo_train.jsonl").read_bytes()
    with pytest.raises(ExportError, match="no prompt of this run has a reference answer"):
        export(run, ExportConfig(test_share=0.0, formats=["trl-dpo", "grpo"]))
    assert (run.path / "exports" / "dpo_train.jsonl").read_bytes() == before


def test_kto_and_grpo_configs_take_every_trl_field():
    from training.train import load_train_config, parse_sets

    args, settings = load_train_config(
        "kto", None, parse_sets(["desirable_weight=1.5", "loss_type=apo_zero_unpaired", "balance=false"])
    )
    assert type(args).__name__ == "KTOConfig" and args.desirable_weight == 1.5 and args.loss_type == "apo_zero_unpaired"
    assert settings["balance"] is False
    args, _ = load_train_config("grpo", None, parse_sets(["num_generations=4", "beta=0.04", "temperature=0.7"]))
    assert type(args).__name__ == "GRPOConfig" and (args.num_generations, args.beta, args.temperature) == (4, 0.04, 0.7)
    with pytest.raises(ConfigError, match="did you mean 'num_generations'"):
        load_train_config("grpo", None, parse_sets(["num_generation=4"]))
    with pytest.raises(ConfigError, match="'balance'"):
        load_train_config("grpo", None, parse_sets(["balance=true"]))


def test_standard_strings_through_the_cli(prefab, tmp_path):
    """`prefab export --format kto --format grpo --standard`: chat-template-rendered prompts, plain-string completions;
    `prefab train` tells the standard shape from the chat one by line 1 (also for dpo)."""
    from training.formats import GrpoText, KtoText, TrlDpoText, read_jsonl

    run, _ = make_run(tmp_path / "run", n_pairs=4, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    run.write("prompts", run.read("prompts").with_columns(reference_answer=pl.lit("2")))
    result = prefab(
        "export", "--run", run.path, "--format", "trl-dpo", "--format", "kto", "--format", "grpo", "--standard"
    )
    assert result.exit_code == 0, result.output
    out = run.path / "exports"
    for stem, model in (("dpo", TrlDpoText), ("kto", KtoText), ("grpo", GrpoText)):
        rows, fmt = read_jsonl(out / f"{stem}_train.jsonl", stem)
        assert fmt is model and rows[0]["prompt"].startswith("<|im_start|>system\nBe brief.")
    kto = read(out / "kto_train.jsonl")
    assert isinstance(kto[0]["completion"], str) and {r["label"] for r in kto} == {True, False}
