"""`prefab train dpo|sft|kto|grpo`: TRL's DPOTrainer, SFTTrainer, KTOTrainer and GRPOTrainer, used as they are, on
an exported JSONL file.

The training config is TRL's own DPOConfig / SFTConfig / KTOConfig / GRPOConfig: every field can be set in the YAML
file (training/configs/*.yaml) or with `--set key=value`, plus four prefab keys: `model` (base model,
default the embedded SmolLM2), `ref_model` (DPO/KTO reference; default a frozen copy of the base, or the
base with the adapter disabled under LoRA), `lora` (peft LoraConfig fields; off when absent) and
`eval_data`; KTO adds `balance`. Works under `accelerate launch -m training.train ...` for multi-GPU
(training/accelerate/).
"""

import dataclasses
import difflib
import json
import sys
import typing
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from pipeline.core.config import EMBEDDED_LLM, Config, ModelSpec, line_of
from pipeline.core.errors import ConfigError, InputError, RunError, unreadable
from pipeline.core.stage import Stage
from pipeline.core.store import Run, atomic_write_text
from pipeline.models.checkpoints import load_tokenizer, model_path
from training import formats
from training.eval import evaluate, print_summary, read_prompts
from training.formats import KTO_RATIO, kto_weights
from training.load import load_data
from training.progress import evaluate_with_progress, show_progress
from training.rewards import check_ground_truth, verifier
from training.settings import TrainConfig

CONFIGS = Path(__file__).parent / "configs"
PREFAB_KEYS = {"model": EMBEDDED_LLM, "ref_model": None, "lora": None, "eval_data": None}
# KTO: set the smaller side's weight from the data when desirable/undesirable are out of TRL's range
# (training/export/card.py)
METHOD_KEYS = {"kto": {"balance": True}}
METHODS = ("dpo", "sft", "kto", "grpo", "reward")


def trl_config_class(method: str):
    """TRL's own config dataclass; all five are in TRL 1.16's stable API (`from trl import ...`)."""
    import trl  # start-up: trl

    if method not in METHODS:
        raise ConfigError(f"unknown training method {method!r}", hint=f"use `prefab train {'|'.join(METHODS)}`")
    return trl.RewardConfig if method == "reward" else getattr(trl, f"{method.upper()}Config")


class Raw(str):
    """A --set value as typed: converted by the field's type (so `no` stays the string "no" for save_strategy)."""


def parse_sets(items: list[str]) -> dict:
    """`key=value` flags, typed later against the TRL field (YAML syntax for lists and mappings)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {item!r} is not key=value", hint="e.g. --set learning_rate=1e-5 --set max_steps=10"
            )
        out[key.strip()] = Raw(value)
    return out


def read_yaml(path: Path) -> tuple[dict, object]:
    if not path.exists():
        raise ConfigError(
            f"training config {path} does not exist",
            hint=f"pass one of {', '.join(str(p) for p in sorted(CONFIGS.glob('*.yaml')))}",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise unreadable(path, e, ConfigError) from None
    try:
        data, node = yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML: {getattr(e, 'problem', e)}", where=f"{path}:{mark.line + 1}" if mark else str(path)
        ) from None
    if data is None:
        return {}, node
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of training settings (key: value)", where=str(path))
    return data, node


def _typed(cls, key: str, value, where: str):
    """Coerce a value to the dataclass field's type (so `--set learning_rate=1e-5` is a float)."""
    if isinstance(value, Raw):  # try the text as typed first ("no" is a strategy), then as YAML ([a, b], {k: v}, null)
        parsed = yaml.safe_load(value) if value.strip() else None
        candidates = [parsed, str(value)] if isinstance(parsed, (dict, list)) else [str(value), parsed]
    else:
        candidates = [value]
    candidates += [[c] for c in candidates if isinstance(c, (str, int, float, bool))]  # one value for a list field
    hint = typing.get_type_hints(cls).get(key)
    try:
        adapter = TypeAdapter(hint)
    except Exception:  # no type, or one pydantic cannot check: the dataclass will
        return candidates[1] if isinstance(value, Raw) else value
    error = None
    for candidate in candidates:
        try:
            return adapter.validate_python(candidate)
        except ValidationError as e:
            error = error or e
    raise ConfigError(
        f"{key}: {error.errors()[0]['msg']} (got {value!r})", where=where, hint=f"{key} is of type {hint}"
    )


def load_train_config(method: str, config_path: str | Path | None = None, overrides: dict | None = None):
    """(TRL config, prefab settings) from the YAML file (default training/configs/<method>.yaml) and overrides."""
    cls = trl_config_class(method)
    path = Path(config_path) if config_path else CONFIGS / f"{method}.yaml"
    data, node = read_yaml(path)
    prefab_keys = {**PREFAB_KEYS, **METHOD_KEYS.get(method, {})}
    valid = {f.name for f in dataclasses.fields(cls) if f.init} | set(prefab_keys)
    merged: dict = {}
    for source, values in ((str(path), data), ("--set", overrides or {})):
        for key, value in values.items():
            where = f"{path}:{line_of(node, [key])}" if source != "--set" else "--set"
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
                raise ConfigError(
                    f"unknown training setting {key!r} (not a {cls.__name__} field nor one of "
                    f"{', '.join(prefab_keys)})",
                    where=where,
                    hint=f"did you mean {close[0]!r}?"
                    if close
                    else f"see the {cls.__name__} fields in TRL's documentation",
                )
            if key == "chat_template_path" and source != "--set" and value and (path.parent / value).exists():
                value = str((path.parent / value).resolve())  # shipped next to the YAML file
            if key in prefab_keys:
                merged[key] = yaml.safe_load(value) if isinstance(value, Raw) and key in ("lora", "balance") else value
            else:
                merged[key] = _typed(cls, key, value, where)
    settings = {k: merged.pop(k, default) for k, default in prefab_keys.items()}
    merged.setdefault("output_dir", f"runs/train/{method}")
    merged.setdefault("report_to", "none")
    import torch  # start-up: torch

    if not torch.cuda.is_available():
        merged.setdefault("bf16", False)  # TRL defaults to bf16, which needs a GPU
    try:
        args = cls(**merged)
    except (TypeError, ValueError) as e:
        hint = "this config is meant for a GPU: use a CPU config or --set bf16=false" if "bf16" in str(e) else None
        raise ConfigError(f"invalid {cls.__name__}: {e}", where=str(path), hint=hint) from None
    return args, settings


def lora_config(settings: dict | None, task_type: str = "CAUSAL_LM"):
    if not settings:
        return None
    from peft import LoraConfig  # start-up: peft

    valid = {f.name for f in dataclasses.fields(LoraConfig)}
    for key in settings:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            raise ConfigError(
                f"unknown LoRA setting lora.{key}",
                hint=f"did you mean {close[0]!r}?" if close else "see peft.LoraConfig",
            )
    return LoraConfig(**{"task_type": task_type, "target_modules": "all-linear", **settings})


def last_checkpoint(output_dir: str, resume: bool | str | None):
    """resume_from_checkpoint for trainer.train: an explicit path, the newest checkpoint, or None."""
    if not resume:
        return None
    if isinstance(resume, str) and resume not in ("true", "True", "1"):
        if not Path(resume).is_dir():
            raise InputError(
                f"checkpoint {resume} does not exist", hint=f"checkpoints are the checkpoint-N folders in {output_dir}"
            )
        return resume
    from transformers.trainer_utils import get_last_checkpoint  # start-up: transformers

    found = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if found is None:
        from pipeline.core.progress import console  # start-up: rich.console, rich.progress, rich.table

        console.print(f"[yellow]no checkpoint in {output_dir}; training from the start[/yellow]")
    return found


def save_outputs(trainer, tokenizer, method: str, data, base: str, lora: bool) -> dict:
    """Model (LoRA merged into a plain checkpoint), tokenizer and metrics.json in output_dir."""
    out = Path(trainer.args.output_dir)
    if lora and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        trainer.save_model(str(out / "adapter"))
        if trainer.is_world_process_zero():
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(out)
            tokenizer.save_pretrained(out)
    else:
        trainer.save_model(str(out))
    metrics = summarize(trainer.state.log_history, method)
    metrics.update(method=method, data=str(data), base_model=base, model_dir=str(out), lora=lora)
    if method in ("dpo", "kto", "grpo"):
        metrics["beta"] = trainer.args.beta
    if method == "kto":
        metrics.update(
            desirable_weight=trainer.args.desirable_weight, undesirable_weight=trainer.args.undesirable_weight
        )
    if trainer.is_world_process_zero():
        atomic_write_text(
            out / "metrics.json", json.dumps({**metrics, "log_history": trainer.state.log_history}, indent=1)
        )
    return metrics


def summarize(history: list[dict], method: str) -> dict:
    """The numbers the manifest and report show: last loss, reward accuracy, tokens/second."""
    steps = [h for h in history if "loss" in h]
    final = next((h for h in reversed(history) if "train_runtime" in h), {})
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    out = {
        "steps": final.get("step", steps[-1]["step"] if steps else 0),
        "train_loss": final.get("train_loss"),
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "train_runtime_s": final.get("train_runtime"),
    }
    tokens = steps[-1].get("num_tokens") if steps else None
    if tokens and final.get("train_runtime"):
        out["train_tokens_per_s"] = round(tokens / final["train_runtime"], 2)
    if method == "dpo" and steps:
        out["reward_accuracy"] = steps[-1].get("rewards/accuracies")
        out["reward_margin"] = steps[-1].get("rewards/margins")
    if method == "kto" and steps:
        out["kl"], out["reward_margin"] = steps[-1].get("kl"), steps[-1].get("rewards/margins")
    if method == "reward" and steps:  # how often chosen outscored rejected, and by how much
        out["accuracy"], out["margin"] = steps[-1].get("accuracy"), steps[-1].get("margin")
    if method == "grpo" and steps:  # the verifier's mean reward over each step's completions
        out["first_reward"], out["last_reward"] = steps[0].get("reward"), steps[-1].get("reward")
    if evals:
        keep = (
            "eval_loss",
            "eval_rewards/accuracies",
            "eval_rewards/margins",
            "eval_mean_token_accuracy",
            "eval_accuracy",
            "eval_margin",
        )
        out.update({k: v for k, v in evals[-1].items() if k in keep})
    return out


def train_dpo(data, config_path=None, overrides: dict | None = None, *, eval_data=None, resume=False) -> dict:
    """Direct preference optimisation on a trl-dpo export (TRL's DPOTrainer, as in trl/scripts/dpo.py)."""
    from trl import DPOTrainer  # start-up: trl

    args, settings, train_dataset, _, eval_dataset, base, tokenizer = prepare(
        "dpo", data, config_path, overrides, eval_data
    )

    # The reference model: a frozen copy of the base unless one is named; with LoRA, TRL disables the
    # adapter instead of keeping a copy; with precompute_ref_log_probs it is only used once, up front.
    ref_model = reference_model(settings, args)

    trainer = DPOTrainer(
        model=base,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings["lora"]),
    )
    return fit(trainer, tokenizer, "dpo", data, base, settings, resume)


def train_sft(data, config_path=None, overrides: dict | None = None, *, eval_data=None, resume=False) -> dict:
    """Supervised fine-tuning on an sft export (TRL's SFTTrainer, as in trl/scripts/sft.py).

    `messages` files train on the assistant turns only (assistant_only_loss, set in sft.yaml);
    prompt/completion files on the completion only (TRL's default for that format).
    """
    from trl import SFTTrainer  # start-up: trl

    args, settings, train_dataset, fmt, eval_dataset, base, tokenizer = prepare(
        "sft", data, config_path, overrides, eval_data
    )
    if fmt is not formats.SftChat and args.assistant_only_loss:
        args.assistant_only_loss = False  # prompt/completion data: completion_only_loss does the same job

    trainer = SFTTrainer(
        model=base,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings["lora"]),
    )
    return fit(trainer, tokenizer, "sft", data, base, settings, resume)


def train_kto(data, config_path=None, overrides: dict | None = None, *, eval_data=None, resume=False) -> dict:
    """KTO on a kto export: unpaired completions labeled desirable or not (TRL's KTOTrainer, as in trl/scripts/kto.py).

    Unbalanced labels get the smaller side's weight raised into TRL's range (`balance`, on by default; the dataset
    card states the same weights); weights already in range, or `balance: false`, are kept as given."""
    from trl import KTOTrainer  # start-up: trl

    args, settings, train_dataset, _, eval_dataset, base, tokenizer = prepare(
        "kto", data, config_path, overrides, eval_data
    )
    n_desirable = sum(train_dataset["label"])
    n_undesirable = len(train_dataset) - n_desirable
    if not n_desirable or not n_undesirable:
        raise InputError(
            f"{data} holds only {'un' if not n_desirable else ''}desirable rows (label "
            f"{'false' if not n_desirable else 'true'}); KTO needs both",
            where=str(data),
            hint="export more pairs (prefab export --format kto), whose chosen side is label true and rejected false",
        )
    if args.loss_type != "apo_zero_unpaired" and args.per_device_train_batch_size < 2:
        raise ConfigError(
            f"per_device_train_batch_size is {args.per_device_train_batch_size}; KTO estimates its KL term from the "
            "other completions of a batch, so it needs at least 2",
            hint="--set per_device_train_batch_size=2",
        )
    weighted = args.desirable_weight * n_desirable / (args.undesirable_weight * n_undesirable)
    if settings["balance"] and not KTO_RATIO[0] <= weighted <= KTO_RATIO[1]:
        args.desirable_weight, args.undesirable_weight = kto_weights(n_desirable, n_undesirable)
        from pipeline.core.progress import console  # start-up: rich.console, rich.progress, rich.table

        console.print(
            f"kto: {n_desirable} desirable / {n_undesirable} undesirable rows: desirable_weight "
            f"{args.desirable_weight}, undesirable_weight {args.undesirable_weight} (TRL's range; balance: "
            "false keeps yours)",
            markup=False,
            highlight=False,
        )
    ref_model = reference_model(settings, args)

    trainer = KTOTrainer(
        model=base,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings["lora"]),
    )
    return fit(trainer, tokenizer, "kto", data, base, settings, resume)


def train_grpo(data, config_path=None, overrides: dict | None = None, *, eval_data=None, resume=False) -> dict:
    """GRPO on a grpo export: the model samples completions for each prompt and learns from the verifier's reward
    (training/rewards.py: math-verify against the reference answer, or the sandboxed tests), TRL's GRPOTrainer as in
    trl/scripts/grpo.py."""
    from trl import GRPOTrainer  # start-up: trl

    args, settings, train_dataset, _, eval_dataset, base, tokenizer = prepare(
        "grpo", data, config_path, overrides, eval_data, read=read_grpo
    )
    if settings["ref_model"]:
        raise ConfigError(
            "GRPO takes no ref_model: with beta > 0 GRPOTrainer keeps its own copy of the base as the reference",
            hint="remove ref_model (and set beta > 0 for a KL penalty)",
        )

    trainer = GRPOTrainer(
        model=base,
        reward_funcs=[verifier],  # named "verifier" in the logs: rewards/verifier/mean
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings["lora"]),
    )
    return fit(trainer, tokenizer, "grpo", data, base, settings, resume)


def train_reward(data, config_path=None, overrides: dict | None = None, *, eval_data=None, resume=False) -> dict:
    """A reward model from a trl-dpo export (TRL's RewardTrainer, as in trl/scripts/reward_modeling.py): the base model
    with a one-output score head, trained so that chosen outscores rejected (Bradley-Terry). The saved folder is a
    sequence-classification model that `judge.reward_models` scores with (pipeline/models/reward.py)."""
    from transformers import AutoModelForSequenceClassification  # start-up: transformers
    from trl import RewardTrainer  # start-up: trl

    args, settings, train_dataset, _, eval_dataset, base, tokenizer = prepare(
        "reward", data, config_path, overrides, eval_data
    )
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, **(args.model_init_kwargs or {}))
    model.config.pad_token_id = tokenizer.pad_token_id

    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings["lora"], task_type="SEQ_CLS"),
    )
    return fit(trainer, tokenizer, "reward", data, base, settings, resume)


def read_grpo(path, method: str):
    """A grpo file as (dataset, format), every reference parsing and every test compiling, and both ground-truth columns
    present (null where absent), so the reward function gets both lists."""
    from datasets import Dataset  # start-up: datasets

    rows, fmt = formats.read_jsonl(path, method)
    check_ground_truth(path, rows)
    return Dataset.from_list(
        [{**r, "reference_answer": r.get("reference_answer"), "tests": r.get("tests")} for r in rows]
    ), fmt


def prepare(method: str, data, config_path, overrides: dict | None, eval_data, read=load_data):
    """What every method reads first: (TRL config, prefab settings, train set, its format, eval set or None, base model
    path, tokenizer). read(path, method) -> (dataset, format)."""
    args, settings = load_train_config(method, config_path, overrides)
    log_third_party_warnings(args.output_dir)
    train_dataset, fmt = read(data, method)
    eval_path = eval_data or settings["eval_data"]
    eval_dataset = read(eval_path, method)[0] if eval_path else None
    base = model_path(settings["model"])
    tokenizer = load_tokenizer(
        base, chat=formats.is_chat(fmt), chat_template_path=getattr(args, "chat_template_path", None)
    )
    need_eval_data(args, eval_dataset)
    return args, settings, train_dataset, fmt, eval_dataset, base, tokenizer


def need_eval_data(args, eval_dataset) -> None:
    if args.eval_strategy != "no" and eval_dataset is None:
        raise ConfigError(
            f"eval_strategy is {args.eval_strategy!r} but no eval data was given", hint="pass --eval-data FILE"
        )


def reference_model(settings: dict, args):
    """The named ref_model, else None: TRL then keeps a frozen copy of the base (with LoRA: the base, adapter off)."""
    if not settings["ref_model"]:
        return None
    from transformers import AutoModelForCausalLM  # start-up: transformers

    return AutoModelForCausalLM.from_pretrained(model_path(settings["ref_model"]), **(args.model_init_kwargs or {}))


def fit(trainer, tokenizer, method: str, data, base: str, settings: dict, resume) -> dict:
    """What every method does with its trainer: one progress bar, train (resuming), evaluate the held-out file when
    no eval strategy did, save the model and metrics.json."""
    args = trainer.args
    progress = show_progress(trainer)
    try:
        trainer.train(resume_from_checkpoint=last_checkpoint(args.output_dir, resume or args.resume_from_checkpoint))
    finally:
        progress.close()
    if trainer.eval_dataset is not None and args.eval_strategy == "no":
        evaluate_with_progress(trainer, "evaluate held-out")  # e.g. DPO's implicit-reward accuracy, into log_history
    metrics = save_outputs(trainer, tokenizer, method, data, base, lora=bool(settings["lora"]))
    _end(trainer)
    return metrics


def log_third_party_warnings(output_dir: str) -> None:
    """Quieted third-party warnings of a `prefab train` outside a run go beside the model (in a run, to RUN/logs)."""
    from pipeline.core.progress import third_party_log  # start-up: rich.console, rich.progress, rich.table

    if not third_party_log:
        third_party_log.append(Path(output_dir) / "logs" / "third_party.log")


def _end(trainer) -> None:
    """Finish trackers and the process group (transformers >= 5.18), as TRL's scripts do."""
    if hasattr(trainer, "end"):
        trainer.end()


def train(method: str, data, config_path=None, overrides: dict | None = None, **kwargs) -> dict:
    trl_config_class(method)
    trainers = {"dpo": train_dpo, "sft": train_sft, "kto": train_kto, "grpo": train_grpo, "reward": train_reward}
    return trainers[method](data, config_path, overrides, **kwargs)


def step(config: Config, run: Run) -> dict:
    """Stage "train" of `prefab run`: train on the run's export, metrics into the manifest."""
    tc = config.train or TrainConfig()
    exports = Path(config.export.out_dir) if config.export and config.export.out_dir else run.path / "exports"
    stem = "dpo" if tc.method == "reward" else tc.method  # dpo_ (dpo, reward), sft_, kto_, grpo_train.jsonl
    data = exports / f"{stem}_train.jsonl"
    if not data.exists():
        raise RunError(
            f"{data} does not exist",
            hint=f"run the export stage first: prefab export --run {run.path} --format "
            f"{formats.EXPORT_FORMAT[tc.method]}",
        )
    test = exports / f"{stem}_test.jsonl"
    overrides = {"output_dir": str(run.path / "train" / tc.method), **tc.overrides}
    metrics = train(
        tc.method,
        data,
        config.resolve(tc.config) if tc.config else None,
        overrides,
        eval_data=test if test.exists() else None,
    )
    out = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and v is not None}
    if tc.evaluate and test.exists():
        out.update(evaluate_after_training(config, run, metrics, test))
    return out


def evaluate_after_training(config, run, metrics: dict, test: Path) -> dict:
    """`train.evaluate`: win rate of the trained model against its base on the held-out prompts."""
    tc = config.train or TrainConfig()
    judge = config.judge.judges[0] if config.judge else ModelSpec()
    summary = evaluate(
        metrics["base_model"],
        metrics["model_dir"],
        read_prompts(test, tc.eval_prompts),
        judge,
        run.path / "eval",
        judge_config=config.judge,
        max_tokens=tc.eval_max_tokens,
        test_file=test if metrics["method"] == "dpo" else None,
        beta=metrics.get("beta") or 0.1,
    )
    print_summary(summary)
    out = {
        "eval_prompts": summary["judged"],
        "win_rate": (summary.get("win_rate") or {}).get("rate"),
        "lc_win_rate": summary["length_controlled"]["rate"],
    }
    if "reward_accuracy" in summary:
        out["test_reward_accuracy"] = summary["reward_accuracy"]["accuracy"]
    return {k: v for k, v in out.items() if v is not None}


if __name__ == "__main__":
    # `python -m training.train dpo --data FILE ...`, the entry point `accelerate launch -m` runs: `prefab train ...`
    # through the prefab CLI group (errors print without a traceback). Imported here, so that loading the stage
    # does not load the CLI.
    from pipeline.commands.cli import cli

    cli.main(args=["train", *sys.argv[1:]], prog_name="python -m training.train")


STAGE = Stage(name="train", order=110, step=step, section="train", settings=TrainConfig)
