"""Reward-model scoring and math verification, each against the plainest code that does the same job, side by side.

(a) reward model: prefab's `reward_scores` (a fresh call cache: it also hashes, caches every score in SQLite and
    tokenizes with the chat template) against a direct loop over the same pre-tokenized texts: pad a batch,
    `model(**batch)`, read the logits, with the same model object and batch size. A seeded one-output score
    head on the embedded SmolLM2 stands in for a trained reward model (the same network and cost). Target:
    at least 0.9x the direct loop's texts per second.
(b) math: prefab's `check_many` (answer extraction and comparison with math-verify, references parsed once,
    its time limits on) against calling math-verify's `parse` and `verify` directly on the same pairs, with no
    limits. Checks per second.

    python -m bench reward      (BENCH_REWARD_TEXTS=256, BENCH_REWARD_BATCH=16, BENCH_MATH_CHECKS=2000)
"""

import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXTS = int(os.environ.get("BENCH_REWARD_TEXTS", "256"))
BATCH = int(os.environ.get("BENCH_REWARD_BATCH", "16"))
CHECKS = int(os.environ.get("BENCH_MATH_CHECKS", "2000"))
ROUNDS = 2


def reward_model(tmp: str) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.models.embedded import resolve_llm

    base = resolve_llm("embedded:smollm2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


def items() -> list[tuple[list[dict], str]]:
    prompts = [
        json.loads(line)
        for line in (ROOT / "data" / "prompts" / "single_turn.jsonl").read_text().splitlines()
        if line.strip()
    ]
    out = []
    for i in range(TEXTS):
        prompt = prompts[i % len(prompts)]["prompt"]
        out.append(
            (
                [{"role": "user", "content": prompt}],
                f"Answer {i}: " + "a reasonable reply with some detail " * (1 + i % 6),
            )
        )
    return out


def direct_loop(model, tokenizer, ids: list[list[int]], batch: int) -> list[float]:
    """What a direct caller writes: batches in order, right padding, model(**batch)."""
    import torch

    out = []
    for start in range(0, len(ids), batch):
        rows = ids[start : start + batch]
        padded = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        with torch.inference_mode():
            out += model(**padded).logits[:, 0].tolist()
    return out


def bench_reward() -> dict:
    import torch

    from pipeline.core.cache import CallCache
    from pipeline.core.config import RewardModelSpec
    from pipeline.models import reward

    torch.set_num_threads(os.cpu_count() or 1)
    data = items()
    with tempfile.TemporaryDirectory() as tmp:
        spec = RewardModelSpec(model=reward_model(tmp + "/rm"), batch_size=BATCH)
        model, tokenizer, _ = reward.load(spec)
        ids = [reward.encode(tokenizer, m, r, spec.max_length) for m, r in data]
        best = {"prefab": 0.0, "direct": 0.0}
        for round_ in range(ROUNDS):  # alternate, best of each (a shared machine)
            cache = CallCache(f"{tmp}/cache-{round_}.sqlite")
            started = time.perf_counter()
            reward.reward_scores(spec, data, cache, "reward")
            best["prefab"] = max(best["prefab"], len(data) / (time.perf_counter() - started))
            cache.close()
            started = time.perf_counter()
            direct_loop(model, tokenizer, ids, BATCH)
            best["direct"] = max(best["direct"], len(data) / (time.perf_counter() - started))
    ratio = best["prefab"] / best["direct"]
    print(
        f"reward model: prefab {best['prefab']:.1f} texts/s, direct model(**batch) loop {best['direct']:.1f} texts/s, "
        f"ratio {ratio:.2f}"
    )
    return {
        "name": f"reward-model scoring, {TEXTS} texts, batch {BATCH} (vs direct model(**batch) loop)",
        "value": round(best["prefab"], 1),
        "baseline": round(best["direct"], 1),
        "ratio": round(ratio, 2),
        "target": ">= 0.9x",
        "unit": "texts/s",
        "ok": ratio >= 0.9,
    }


def bench_math() -> dict:
    from math_verify import parse, verify

    from pipeline.stages.verify import check_many

    rows = [
        json.loads(line) for line in (ROOT / "data" / "prompts" / "math.jsonl").read_text().splitlines() if line.strip()
    ]
    pairs = []
    for i in range(CHECKS):
        answer = rows[i % len(rows)]["answer"]
        shown = answer.strip("$") if i % 2 else "123457"
        pairs.append((answer, f"Working through it step by step, the final answer is $\\boxed{{{shown}}}$."))
    started = time.perf_counter()
    check_many(pairs, timeout_s=5, float_rounding=6)
    prefab = len(pairs) / (time.perf_counter() - started)
    started = time.perf_counter()
    for reference, text in pairs:
        verify(parse(reference), parse(text), timeout_seconds=None)
    direct = len(pairs) / (time.perf_counter() - started)
    print(
        f"math: prefab check_many {prefab:.0f} checks/s, direct parse+verify {direct:.0f} checks/s, "
        f"ratio {prefab / direct:.2f}"
    )
    return {
        "name": f"math-verify checks/s, {CHECKS} answers (vs direct parse + verify)",
        "value": round(prefab, 1),
        "baseline": round(direct, 1),
        "ratio": round(prefab / direct, 2),
        "target": "info",
        "unit": "checks/s",
        "ok": None,
    }


def main() -> list[dict]:
    return [bench_math(), bench_reward()]


if __name__ == "__main__":
    main()
