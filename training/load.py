"""What training and evaluation both load: a checkpoint's path, its tokenizer, an exported JSONL file as a Dataset."""

from pathlib import Path

from pipeline.core.errors import ModelError
from training import formats


def model_path(name: str) -> str:
    """A local checkpoint directory (or a hub name the user chose), checked before TRL tries to load it."""
    from pipeline.models.embedded import resolve_llm

    path = resolve_llm(name)
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise ModelError(f"{path} holds no config.json, so it is not a model checkpoint",
                         hint="pass the directory that `save_pretrained` wrote (config.json + weights), or embedded:smollm2")
    return path


def load_tokenizer(path: str, chat: bool, chat_template_path: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the tokenizer of {path}: {e}", hint="the model directory needs tokenizer files") from e
    if chat and not tokenizer.chat_template and not chat_template_path:
        raise ModelError(f"the tokenizer of {path} has no chat template, so conversational data cannot be rendered",
                         hint="train a chat (instruct) model, set chat_template_path (SFT), or export standard strings: "
                              "prefab export --standard")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_data(data: str | Path, method: str):
    from datasets import Dataset

    rows, fmt = formats.read_jsonl(data, method)
    return Dataset.from_list(rows), fmt
