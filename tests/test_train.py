"""prefab train: TRL's DPOTrainer / SFTTrainer on exported files, a few steps of the embedded SmolLM2 on CPU
(loss logged, weights changed, metrics beside the model), checkpoints and resume, LoRA, torchrun with two
processes, and clear errors for bad input."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from labeling_runs import make_run

from pipeline.core.errors import ConfigError
from training.export.stage import export
from training.settings import ExportConfig

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parent.parent
# tiny: 2 steps of one short example each, no checkpoints unless a test asks
TINY = {
    "max_steps": 2,
    "per_device_train_batch_size": 1,
    "max_length": 48,
    "learning_rate": 1e-4,
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    run, _ = make_run(tmp_path_factory.mktemp("train") / "run", n_pairs=4, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    export(run, ExportConfig(test_share=0.25))
    return run.path / "exports"


@pytest.fixture(scope="module")
def base_weights():
    from safetensors.torch import load_file

    from pipeline.models.embedded import resolve_llm

    return load_file(str(Path(resolve_llm("embedded:smollm2")) / "model.safetensors"))


def changed_tensors(model_dir: Path, base: dict) -> int:
    import torch
    from safetensors.torch import load_file

    trained = load_file(str(model_dir / "model.safetensors"))
    assert trained.keys() == base.keys()
    return sum(not torch.equal(trained[k], base[k]) for k in base)


def losses(model_dir: Path) -> list[float]:
    history = json.loads((model_dir / "metrics.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def test_dpo_two_steps_then_resume(exports, base_weights, tmp_path, capsys):
    from training.train import train_dpo

    out = tmp_path / "dpo"
    overrides = {**TINY, "output_dir": str(out), "save_strategy": "steps", "save_steps": 2}
    metrics = train_dpo(exports / "dpo_train.jsonl", None, overrides, eval_data=exports / "dpo_test.jsonl")
    assert metrics["steps"] == 2
    assert len(losses(out)) == 2 and all(l == l and l > 0 for l in losses(out))  # noqa: E741 (finite, positive)
    assert metrics["reward_accuracy"] is not None and metrics["eval_rewards/accuracies"] is not None
    assert changed_tensors(out, base_weights) > 100
    assert (out / "checkpoint-2").is_dir() and (out / "tokenizer_config.json").exists()
    # resume: the newest checkpoint's optimizer and step are restored, only step 3 is trained
    metrics = train_dpo(exports / "dpo_train.jsonl", None, {**overrides, "max_steps": 3}, resume=True)
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    assert metrics["steps"] == 3 and [h["step"] for h in history if "loss" in h] == [1, 2, 3]
    streamed = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in streamed if "loss" in r] == [1, 2, 3] and any("eval_loss" in r for r in streamed)
    shown = capsys.readouterr()
    assert "reward accuracy" in shown.err and "'loss'" not in shown.out + shown.err  # one bar, no printed log dicts


def test_sft_two_steps_on_assistant_tokens(exports, base_weights, tmp_path, monkeypatch):
    """The labels the loss is computed on (read at compute_loss, TRL's own) are -100 everywhere but the
    assistant turn, which is labeled whole: found in the token ids by its chat-template header, independently
    of TRL's masking."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from pipeline.models.embedded import resolve_llm
    from training.train import train_sft

    seen = []
    original = SFTTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        seen.append((inputs["input_ids"].tolist(), inputs["labels"].tolist()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "compute_loss", recording)
    out = tmp_path / "sft"
    metrics = train_sft(exports / "sft_train.jsonl", None, {**TINY, "output_dir": str(out)})
    assert metrics["steps"] == 2 and len(losses(out)) == 2
    assert changed_tensors(out, base_weights) > 100

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("embedded:smollm2"))
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = {
        m["content"]
        for line in (exports / "sft_train.jsonl").read_text().splitlines()
        for m in json.loads(line)["messages"]
        if m["role"] == "assistant"
    }
    assert len(seen) == 2
    for batch_ids, batch_labels in seen:
        for ids, labels in zip(batch_ids, batch_labels, strict=True):
            starts = [i + len(header) for i in range(len(ids)) if ids[i : i + len(header)] == header]
            assert len(starts) == 1, tokenizer.decode(ids)  # one assistant turn (not cut off by max_length)
            stop = ids.index(end, starts[0]) + 1 if end in ids[starts[0] :] else len(ids)
            want = [t if starts[0] <= i < stop else -100 for i, t in enumerate(ids)]
            assert labels == want, (tokenizer.decode(ids), [tokenizer.decode([t]) for t in labels if t != -100])
            assert tokenizer.decode(ids[starts[0] : stop]).removesuffix("<|im_end|>") in answers


def test_sft_prompt_completion_with_lora_is_merged(exports, base_weights, tmp_path):
    from transformers import AutoModelForCausalLM

    from training.train import train_sft

    out = tmp_path / "sft-lora"
    metrics = train_sft(
        exports / "sft_pc_train.jsonl",
        None,
        {**TINY, "max_steps": 1, "output_dir": str(out), "lora": {"r": 4, "lora_alpha": 8}, "learning_rate": 1e-2},
    )
    assert metrics["lora"] and (out / "adapter" / "adapter_config.json").exists()
    assert changed_tensors(out, base_weights) > 0  # the merged checkpoint differs from the base
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain checkpoint, usable as the next generator
    assert not hasattr(model, "peft_config") or not model.peft_config


@pytest.mark.slow
def test_two_processes_with_torchrun(exports, tmp_path):
    """Two processes through the module entry point `accelerate launch -m` uses: they train, and one of them reports.
    (On CPU, TrainingArguments leaves them NOT_PARALLEL, each training alone; this does not show data parallelism.)"""
    out = tmp_path / "ddp"
    # TMPDIR: torchrun leaves its torchelastic_* folder behind
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "training.train",
        "dpo",
        "--data",
        str(exports / "dpo_train.jsonl"),
        "--output-dir",
        str(out),
        "--set",
        "max_steps=1",
        "--set",
        "per_device_train_batch_size=1",
        "--set",
        "max_length=48",
        "--set",
        "save_strategy=no",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 1 and (out / "model.safetensors").exists()
    output = result.stdout + result.stderr
    # one summary and one progress display, from rank 0 (in a log: its start and end lines around the stage)
    assert len(re.findall(r"(?<!stage )train dpo(?!:)", output)) == 1, output[-3000:]
    assert output.count("stage train dpo: start") == 1 and output.count("train: start") == 1, output[-3000:]


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    names = {p.name for p in (ROOT / "training" / "accelerate").glob("*.yaml")}
    assert names == {"ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"}
    kinds = {
        name: str(load_config_from_file(str(ROOT / "training" / "accelerate" / name)).distributed_type)
        for name in names
    }
    assert kinds == {
        "ddp.yaml": "DistributedType.MULTI_GPU",
        "deepspeed_zero2.yaml": "DistributedType.DEEPSPEED",
        "deepspeed_zero3.yaml": "DistributedType.DEEPSPEED",
        "fsdp.yaml": "DistributedType.FSDP",
    }


# ---------------------------------------------------------------- configuration


def test_every_trl_field_is_settable_and_typos_are_caught(tmp_path):
    from training.train import load_train_config, parse_sets

    args, settings = load_train_config(
        "dpo",
        None,
        parse_sets(
            ["learning_rate=3e-6", "beta=0.25", "save_strategy=no", "loss_type=[sigmoid, sft]", "model=/some/where"]
        ),
    )
    assert args.learning_rate == 3e-6 and args.beta == 0.25 and args.loss_type == ["sigmoid", "sft"]
    assert str(args.save_strategy.value) == "no" and settings["model"] == "/some/where"
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\nlearnig_rate: 1.0e-5\n")
    with pytest.raises(ConfigError) as e:
        load_train_config("dpo", bad)
    assert f"{bad}:2" in str(e.value) and "'learning_rate'" in str(e.value)
    with pytest.raises(ConfigError, match="max_steps.*integer"):
        load_train_config("sft", None, parse_sets(["max_steps=many"]))
    from training.train import lora_config

    with pytest.raises(ConfigError) as e:
        lora_config({"rr": 8})
    assert "lora.rr" in str(e.value) and "did you mean 'r'" in str(e.value)
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ConfigError, match="meant for a GPU"):
            load_train_config("dpo", ROOT / "training" / "configs" / "dpo-gpu.yaml")


# ---------------------------------------------------------------- bad input, through the CLI


def test_bad_input_is_a_clear_error(exports, prefab, tmp_path):
    def fails(*args, expect):
        result = prefab("train", *args)
        assert result.exit_code != 0, result.output
        assert expect in result.output, result.output
        assert "Traceback" not in result.output
        return result

    data = exports / "dpo_train.jsonl"
    fails("dpo", "--data", tmp_path / "missing.jsonl", expect="does not exist")
    fails("dpo", "--data", exports / "openai_dpo_train.jsonl", expect="OpenAI preference file")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(data.read_text().splitlines()[0] + "\n{not json\n")
    fails("dpo", "--data", broken, expect=f"{broken}:2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails("sft", "--data", empty, expect="holds no examples")
    equal = tmp_path / "equal.jsonl"
    row = json.loads(data.read_text().splitlines()[0])
    equal.write_text(json.dumps({**row, "rejected": row["chosen"]}) + "\n")
    fails("dpo", "--data", equal, expect="same text")
    fails("dpo", "--data", data, "--model", tmp_path / "no-such-model", expect="does not exist")
    fails("dpo", "--data", data, "--set", "max_step=3", expect="did you mean 'max_steps'")
    # a tokenizer without a chat template cannot render conversational data
    from pipeline.models.embedded import resolve_llm

    plain = tmp_path / "plain-model"
    plain.mkdir()
    source = Path(resolve_llm("embedded:smollm2"))
    shutil.copy(source / "config.json", plain)
    shutil.copy(source / "tokenizer.json", plain)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    fails("dpo", "--data", data, "--model", plain, expect="no chat template")
    notmodel = tmp_path / "not-a-model"
    notmodel.mkdir()
    fails("sft", "--data", exports / "sft_train.jsonl", "--model", notmodel, expect="no config.json")


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "dpo", "--data", str(tmp_path / "none.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_train_stage_records_metrics_in_the_manifest(tmp_path):
    """`prefab run` stage "train": trains on the run's export, metrics into the manifest, report section."""
    from pipeline.core.runner import run_step
    from training.report import report_section
    from training.settings import TrainConfig

    run, config = make_run(tmp_path / "run", n_pairs=3, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    config.export = ExportConfig(test_share=0.0)
    config.train = TrainConfig(method="dpo", overrides={**TINY, "max_steps": 1})
    run_step("export", config, run)
    assert report_section(run) is None
    run_step("train", config, run)
    info = run.stage_info("train")
    assert info["status"] == "complete" and info["steps"] == 1 and info["model_dir"] == str(run.path / "train" / "dpo")
    assert info["last_loss"] > 0 and "reward_accuracy" in info
    html = report_section(run)
    assert "<h2>Training</h2>" in html and "data:image/png;base64," in html
