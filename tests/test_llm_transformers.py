"""The transformers backend (pipeline/models/llm_transformers.py) through call_llm on the real embedded model
(SmolLM2-135M-Instruct): a few short generations."""

from dataclasses import replace

import pytest

from pipeline.core.cache import CallCache
from pipeline.core.config import ModelSpec
from pipeline.models.llm import Request, call_llm
from pipeline.models.llm_transformers import load_model

SPEC = ModelSpec(backend="transformers", model="embedded:smollm2", batch_size=4, device="cpu")


def chat(text: str, **kw) -> Request:
    return Request([{"role": "user", "content": text}], **{"max_tokens": 8, **kw})


@pytest.fixture(scope="module")
def model():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CI shares 2 cores: one thread per process beats oversubscribed OpenMP by far
    yield load_model(SPEC.model, SPEC.device)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(model, tmp_path_factory):
    """One batch of four, answered once for the tests below."""
    cache = CallCache(tmp_path_factory.mktemp("llm") / "cache.sqlite")
    requests = [
        chat("What is the capital of France?", temperature=0),
        chat("Write one word about the sea.", temperature=1.0, seed=1),
        chat("Write one word about the sea.", temperature=1.0, seed=2),
        chat(
            "List three fruits, one per line.", temperature=0, max_tokens=16, stop=["\n"], logprobs=True, top_logprobs=3
        ),
    ]
    return cache, requests, call_llm(SPEC, requests, cache, "test")


def test_answers_with_token_counts(model, batch):
    _, tokenizer, _ = model
    _, requests, results = batch
    for request, result in zip(requests, results, strict=True):
        assert result.error is None and not result.cached and result.text.strip()
        assert 1 <= result.completion_tokens <= request.max_tokens
        assert result.finish_reason in ("stop", "length")
        assert result.prompt_tokens == len(
            tokenizer.apply_chat_template(
                request.messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )


def test_greedy_matches_model_generate(model, batch):
    model_, tokenizer, _ = model
    _, requests, results = batch
    inputs = tokenizer.apply_chat_template(
        requests[0].messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model_.generate(**inputs, do_sample=False, max_new_tokens=8)
    assert results[0].text == tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in results[0].text


def test_seed_decides_the_sample_not_the_batch(batch):
    cache, requests, results = batch
    assert results[1].text != results[2].text  # seeds 1 and 2 differ
    # the same request alone (a batch of one, other padding) samples the same tokens
    [alone] = call_llm(SPEC, [replace(requests[1], max_tokens=7)], cache, "test")
    assert results[1].text.startswith(alone.text)


def test_stop_strings_and_logprobs(batch):
    _, _, results = batch
    listed = results[3]
    assert "\n" not in listed.text and listed.finish_reason == "stop"
    assert len(listed.logprobs) == listed.completion_tokens
    assert all(len(t["top_logprobs"]) == 3 and t["logprob"] <= 0 for t in listed.logprobs)
    assert all(t["top_logprobs"][0]["logprob"] >= t["logprob"] for t in listed.logprobs)


def test_second_call_comes_from_the_cache(batch):
    cache, requests, results = batch
    again = call_llm(SPEC, requests, cache, "test")
    assert all(r.cached for r in again)
    assert [r.text for r in again] == [r.text for r in results]


def test_missing_model_path_is_a_model_error(tmp_path):
    from pipeline.core.errors import ModelError

    with pytest.raises(ModelError, match="does not exist"):
        call_llm(
            ModelSpec(backend="transformers", model=str(tmp_path / "nope")),
            [chat("hi")],
            CallCache(tmp_path / "c.sqlite"),
            "t",
        )
