"""Local checkpoints (pipeline/models/checkpoints.py): a tiny causal LM retrained in place is asked again by the
generate stage in the same run directory (its cache keys carry the checkpoint's fingerprint, and the in-process loader
reloads it), and a rerun without a change comes from the cache. The fingerprint covers the folder's files, not its
subfolders;
keys of models that are not local checkpoints are unchanged."""

import json
import os
from pathlib import Path

import pytest

from pipeline.core.store import Run

PROMPT = "Name a colour."


def tiny_checkpoint(out: Path, seed: int) -> Path:
    """A Llama of hidden size 8, one layer, random weights (seeded), with the embedded SmolLM2's tokenizer: ~2 MB,
    no hub."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.models.embedded import resolve_llm

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("embedded:smollm2"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)  # large random weights: greedy answers that differ between seeds
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def retrain_in_place(path: Path, seed: int) -> None:
    """New weights saved over the old ones, as `prefab train --output` into the same folder would."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.save_pretrained(path)


def write_config(tmp_path: Path, prompts: Path, stages: list[str], **sections) -> Path:
    """A run config in tmp_path: its run directory, the stages, ingest reading `prompts`, and `sections`."""
    config = tmp_path / "config.yaml"
    body = {"run": str(tmp_path / "run"), "stages": stages, "ingest": {"paths": [str(prompts)]}, **sections}
    config.write_text(json.dumps(body))
    return config


def greedy(path: Path, max_tokens: int) -> str:
    """The answer transformers' own generate gives: what the backend must give at temperature 0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_a_checkpoint_retrained_in_place_is_asked_again(tmp_path, prefab):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _retrained_in_place(tmp_path, prefab)
    finally:
        torch.set_num_threads(threads)


def _retrained_in_place(tmp_path, prefab):
    model = tiny_checkpoint(tmp_path / "tiny", seed=0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n")
    gen = {
        "name": "tiny",
        "backend": "transformers",
        "model": str(model),
        "device": "cpu",
        "batch_size": 1,
        "temperatures": [0.0],
        "n": 1,
        "max_tokens": 6,
    }
    config = write_config(tmp_path, prompts, ["ingest", "generate"], generate={"generators": [gen]})
    run = Run(tmp_path / "run")

    result = prefab("run", config)
    assert result.exit_code == 0, result.output
    assert run.stage_info("generate")["calls"] == 1
    first = run.read("candidates")["text"].to_list()
    assert first == [greedy(model, 6)]

    retrain_in_place(model, seed=1)
    result = prefab("generate", "--run", run.path)  # the same run directory, the same config
    assert result.exit_code == 0, result.output
    info = run.stage_info("generate")
    assert info["calls"] == 1 and info["cached"] == 0  # asked again, not answered from the old weights' cache
    second = run.read("candidates")["text"].to_list()
    assert second == [greedy(model, 6)] and second != first  # by the retrained weights (the process reloaded them)

    result = prefab("generate", "--run", run.path)  # nothing changed: from the cache
    assert result.exit_code == 0, result.output
    info = run.stage_info("generate")
    assert info["calls"] == 0 and info["cached"] == 1
    assert run.read("candidates")["text"].to_list() == second

    # `prefab run` sees it too: the stage is complete until the checkpoint changes, then it runs again
    result = prefab("run", config)
    assert result.exit_code == 0 and "ran nothing" in result.output, result.output
    retrain_in_place(model, seed=2)
    result = prefab("run", config)
    assert result.exit_code == 0 and "ran generate" in result.output, result.output
    assert run.stage_info("generate")["calls"] == 1
    assert run.read("candidates")["text"].to_list() == [greedy(model, 6)]


def test_fingerprint_follows_the_files_of_the_folder(tmp_path):
    from pipeline.core.errors import ModelError
    from pipeline.models.checkpoints import fingerprint, identity

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    before = fingerprint(folder)
    assert identity(str(folder)) == before and fingerprint(str(folder)) == before
    (folder / "checkpoint-2").mkdir()  # a trainer's intermediate checkpoint is not the model that loads
    (folder / "checkpoint-2" / "model.safetensors").write_bytes(b"other")
    assert fingerprint(folder) == before
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
    ):  # weights, config and tokenizer all count
        (folder / name).write_bytes(b"changed")
        after = fingerprint(folder)
        assert after != before, name
        before = after
    stat = (folder / "config.json").stat()
    os.utime(folder / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten, same size
    assert fingerprint(folder) != before
    with pytest.raises(ModelError, match="does not exist"):
        fingerprint(tmp_path / "missing")
    assert identity("embedded:smollm2") is None and identity("org/hub-model") is None


def test_cache_keys_of_other_models_are_unchanged_and_a_local_one_carries_its_files(tmp_path):
    from pipeline.core.cache import request_key
    from pipeline.core.config import ModelSpec
    from pipeline.models.backends import Request
    from pipeline.models.checkpoints import fingerprint
    from pipeline.models.llm import cache_key, cache_keys

    request = Request([{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=4)
    for spec in (
        ModelSpec(backend="transformers", model="embedded:smollm2"),
        ModelSpec(backend="openai", model="gpt-4o-mini"),
    ):
        assert cache_key(spec, request) == request_key(
            {"backend": spec.backend, "model": spec.model, **request.payload()}
        )
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    local = ModelSpec(backend="transformers", model=str(folder))
    key = request_key(
        {"backend": "transformers", "model": str(folder), "checkpoint": fingerprint(folder), **request.payload()}
    )
    assert cache_key(local, request) == key and cache_keys(local, [request, request]) == [key, key]


def test_an_embedder_retrained_in_place_encodes_again(tmp_path, prefab, monkeypatch):
    """The vector cache keys a local embedder by its files too: retrained in place, the same texts are encoded by the
    new weights (and dedup, which embeds, runs again under `prefab run`); unchanged, they come from the cache."""
    import shutil

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline.models.embedded import resolve_embedder
    from pipeline.stages import embed
    from pipeline.stages.embed import VECTOR_CACHE, VectorCache, cache_name, embed_texts, text_hash

    embedder = tmp_path / "embedder"
    shutil.copytree(resolve_embedder("embedded:all-minilm-l6-v2"), embedder)
    prompts = tmp_path / "prompts.jsonl"
    texts = ["Name a colour.", "Write a haiku about rain.", "What is 2 + 2?"]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    config = write_config(
        tmp_path, prompts, ["ingest", "dedup"], dedup={"semantic": True, "clusters": 2}, embed={"model": str(embedder)}
    )
    run = Run(tmp_path / "run")
    result = prefab("run", config)
    assert result.exit_code == 0, result.output
    before = embed_texts(texts, str(embedder), run.path)

    result = prefab("run", config)
    assert result.exit_code == 0 and "ran nothing" in result.output, result.output

    st = SentenceTransformer(str(embedder), device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in st.parameters():
            p.add_(0.05 * torch.randn_like(p))
    st.save(str(embedder))
    fresh = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    after = embed_texts(texts, str(embedder), run.path)
    assert not np.allclose(after, before, atol=1e-3)  # not the old weights' cached vectors
    assert np.allclose(after, fresh, atol=1e-5)  # the retrained weights' own
    result = prefab("run", config)
    assert result.exit_code == 0 and "ran dedup" in result.output, result.output
    cache = VectorCache(run.path / VECTOR_CACHE)
    assert len(cache.get_many(cache_name(str(embedder)), [text_hash(t) for t in texts])) == 3
    cache.close()

    def no_load(*args):
        raise AssertionError("the model was loaded: the cache was not used")

    monkeypatch.setattr(embed, "load_model", no_load)
    assert np.allclose(embed_texts(texts, str(embedder), run.path), after)  # unchanged: from the cache
