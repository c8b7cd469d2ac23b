"""Model checkpoints: where a model's name points (model_path), its tokenizer (load_tokenizer), and what its files
are now (fingerprint). Every cache key that names a local checkpoint carries its fingerprint (identity): generate
and judge (pipeline/models/llm.py), reward scores (pipeline/models/reward.py) and `prefab eval`'s answers, so a
checkpoint retrained in place is asked again instead of answered from its old weights' cache."""

import hashlib
import json
from pathlib import Path

from pipeline.core.errors import ModelError
from pipeline.models.embedded import EMBEDDED_LLM, resolve_llm


def model_path(name: str) -> str:
    """A local path for a model: embedded:smollm2 (converted on first use), a checkpoint directory, a .gguf file, or a
    hub name the user chose (offline, or a name that looks like a path: ModelError). A directory must hold config.json:
    checked here, before transformers or TRL fails on it deep inside a load."""
    path = resolve_llm(name)
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise ModelError(
            f"{path} holds no config.json, so it is not a model checkpoint",
            hint="pass the directory that `save_pretrained` wrote (config.json + weights), or embedded:smollm2",
        )
    return path


def load_tokenizer(
    name: str | None = None, *, chat: bool = False, chat_template_path: str | None = None, hint: str | None = None
):
    """A model's tokenizer alone, without its weights (token counts, exports, trainers), loaded afresh on each call
    (trainers change it). `name` is a model or tokenizer directory, embedded:smollm2 (the default) or a hub name;
    `hint` says how to fix a tokenizer that does not load. With `chat`, a tokenizer without a chat template is
    refused, unless `chat_template_path` is to give it one: conversational data cannot be rendered without. A
    tokenizer without a pad token pads with its end-of-sequence token."""
    from transformers import AutoTokenizer  # start-up: transformers

    name = name or EMBEDDED_LLM
    path = resolve_llm(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"could not load the tokenizer of {name!r} from {path}: {e}",
            hint=hint or "pass a model directory holding tokenizer files (tokenizer.json), or embedded:smollm2",
        ) from e
    if chat and not tokenizer.chat_template and not chat_template_path:
        raise ModelError(
            f"the tokenizer of {path} has no chat template, so conversational data cannot be rendered",
            hint="train a chat (instruct) model, set chat_template_path (SFT), or export standard strings: "
            "prefab export --standard",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fingerprint(path: str | Path) -> str:
    """What a local checkpoint is now: a hash of the name, size and modification time (ns) of each file in its folder
    (or of the file itself: a .gguf), subfolders left out.

    Every file, not only the weights: config.json and generation_config.json change answers too, and the tokenizer
    files and chat template change the prompt tokens. Subfolders are left out: a trainer's checkpoint-N/ and logs
    are not the model that loads. Size and mtime, not contents: a stat per file costs microseconds where hashing a
    multi-GB checkpoint would cost seconds on every run; a retrain in place rewrites the files, so their mtimes
    change. (Only a copy that keeps other weights' sizes and mtimes would go unseen.) ModelError where nothing is
    at the path."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model path {path} does not exist", hint="pass an existing checkpoint directory")
    files = [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def local_fingerprints(models: list[str]) -> dict[str, str]:
    """model name -> fingerprint, for those of `models` that are local checkpoints (a stage's `inputs`)."""
    found = {model: identity(model) for model in models}
    return {model: stamp for model, stamp in found.items() if stamp}


def identity(name: str) -> str | None:
    """What a cache key holds besides a model's name: the fingerprint where the name is a local checkpoint (a folder
    or a file); None for a hub, remote or embedded model, whose name says it all (so their keys are what they were)."""
    if name.startswith("embedded:"):
        return None
    path = Path(name).expanduser()
    return fingerprint(path) if path.exists() else None
