"""Reward models as scorers: a sequence-classification model with one output (TRL's RewardTrainer makes them:
`prefab train reward`) scores a prompt and a response as the trainer read them: the chat template over the
whole conversation, the model's logit at its last token. A reward is on the model's own scale; under the
Bradley-Terry loss it was trained with, sigmoid(reward_a - reward_b) is the probability that a is preferred.

Batched by length (little padding), on GPU when present. Every score goes through the run's call cache like
any model call, keyed by the model's files (names, sizes, modification times: pipeline/models/checkpoints.py), so a
retrained model at the same path is scored afresh and a rerun scores nothing twice.
"""

import time

from pipeline.core.cache import CallCache, request_key
from pipeline.core.errors import ModelError
from pipeline.models.checkpoints import identity, model_path
from pipeline.models.llm_transformers import load_model


def check_reward_model(path: str, name: str) -> None:
    """A reward model must say it is one: a ...ForSequenceClassification architecture with one label. A causal LM
    would load with a freshly initialised (random) head and give random scores without a word."""
    from transformers import AutoConfig  # start-up: transformers

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"reward model {name!r}: cannot read its config at {path}: {e}",
            hint="pass a folder saved by `prefab train reward` (or any sequence-classification model)",
        ) from e
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or config.num_labels != 1:
        raise ModelError(
            f"{path} is not a reward model: its config lists {', '.join(architectures) or 'no architecture'} "
            f"with {config.num_labels} label(s)",
            hint="a reward model is a ...ForSequenceClassification model with num_labels 1; "
            "train one with `prefab train reward --data RUN/exports/dpo_train.jsonl`",
        )


def load(spec):
    """(model, tokenizer, device), once per process and device (pipeline/models/llm_transformers.py's loader)."""
    check_reward_model(model_path(spec.model), spec.label)
    model, tokenizer, device = load_model(spec.model, spec.device, head="AutoModelForSequenceClassification")
    model.config.pad_token_id = tokenizer.pad_token_id  # where the model reads the last non-pad token
    return model, tokenizer, device


def encode(tokenizer, messages: list[dict], response: str, max_length: int) -> list[int]:
    """The token ids the RewardTrainer trains on (the chat template over prompt and response), the last max_length."""
    ids = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=True, return_dict=True
    )["input_ids"]
    return list(ids[-max_length:])


def score_batches(model, tokenizer, device, ids: list[list[int]], batch_size: int, done=None) -> list[float]:
    """Rewards of tokenized texts, batched by length (right padding; the model finds each row's last token).
    done(indices, rewards) after each batch."""
    import torch  # start-up: torch

    out: list[float] = [0.0] * len(ids)
    order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(ids[j]) for j in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, j in enumerate(batch):
            input_ids[row, : len(ids[j])] = torch.tensor(ids[j])
            mask[row, : len(ids[j])] = 1
        try:
            with torch.inference_mode():
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        except torch.OutOfMemoryError as e:
            raise ModelError(
                f"out of memory scoring a batch of {len(batch)} on {device}", hint="lower batch_size"
            ) from e
        for row, j in enumerate(batch):
            out[j] = float(logits[row, 0])
        if done:
            done(batch, [out[j] for j in batch])
    return out


def reward_scores(
    spec, items: list[tuple[list[dict], str]], cache: CallCache, description: str, tick=None
) -> list[dict]:
    """{overall: reward, error} per (messages, response), from the cache where scored before; `tick` as call_llm's."""
    from pipeline.models.llm import own_ticker  # start-up: pydantic, rich.console, rich.progress, rich.table, yaml

    stamp = identity(spec.model) or model_path(spec.model)  # a local checkpoint's files; a hub name stands for itself
    keys = [
        request_key(
            {
                "kind": "reward",
                "model": spec.model,
                "files": stamp,
                "max_length": spec.max_length,
                "messages": m,
                "response": r,
            }
        )
        for m, r in items
    ]
    hits = cache.get_many(list(dict.fromkeys(keys)))
    todo = [j for j, k in enumerate(keys) if k not in hits]
    if tick and len(todo) < len(keys):
        tick(len(keys) - len(todo), cached=True)
    if todo:
        model, tokenizer, device = load(spec)
        ids = [encode(tokenizer, *items[j], spec.max_length) for j in todo]
        with own_ticker(description, len(todo), 0, tick) as advance:
            started = [time.perf_counter()]

            def save(
                batch: list[int], rewards: list[float]
            ) -> None:  # committed per batch: a kill loses one batch at most
                latency = (time.perf_counter() - started[0]) / len(batch)
                started[0] = time.perf_counter()
                for b, reward in zip(batch, rewards, strict=True):
                    j = todo[b]
                    hits[keys[j]] = {"reward": reward}
                    cache.put(
                        keys[j],
                        {"model": spec.model, "files": stamp, "messages": items[j][0], "response": items[j][1]},
                        {"reward": reward, "latency_s": round(latency, 5)},
                        kind="reward",
                    )
                advance(len(batch))

            score_batches(model, tokenizer, device, ids, spec.batch_size, save)
    return [{"overall": hits[k]["reward"], "error": None} for k in keys]
