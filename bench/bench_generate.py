"""Generation throughput: prefab's `generate` against the plainest code that does the same job, side by side.

(a) openai backend: 10,000 prompts against the local OpenAI-compatible server (tests/openai_server.py,
    its own process, 50 ms per request), concurrency 64. Baseline: a bare `AsyncOpenAI` loop
    with the SDK's defaults, written two ways (semaphore + gather; 64 workers on one iterator), the
    faster counts. prefab: `pipeline.stages.generate.generate` with a fresh call cache, so it also hashes,
    caches every answer in SQLite and builds the candidates table. Each side runs ROUNDS times (2),
    alternating, best run counts (machines are shared). Peak RSS of this process after (a).
(b) transformers backend: the same prompts through `call_llm` (fresh cache) and through direct
    `model.generate` calls with the same model object, batch size and max_new_tokens (chat template,
    tokenize with left padding, generate, decode: what a direct caller writes). Compared in generated
    tokens per second (sampled rows stop at different lengths), sampled (t=0.7) and greedy.

    python bench/bench_generate.py [--prompts 10000] [--llm-prompts 32] [--threads N] [--json out.json]
"""

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N_PROMPTS = int(os.environ.get("BENCH_GENERATE_PROMPTS", "10000"))
N_LLM_PROMPTS = int(os.environ.get("BENCH_GENERATE_LLM_PROMPTS", "32"))
CONCURRENCY = 64
LATENCY = 0.05
MAX_TOKENS = 64
LLM_MAX_TOKENS = int(os.environ.get("BENCH_GENERATE_LLM_MAX_TOKENS", "32"))
ROUNDS = int(os.environ.get("BENCH_GENERATE_ROUNDS", "2"))


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "openai_server.py"), "--latency", str(latency), "--no-bodies"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.match(r"READY (\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, match.group(1)


def prompt_texts(n: int) -> list[str]:
    base = [
        json.loads(line)["prompt"]
        for line in (ROOT / "data" / "prompts" / "single_turn.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return [f"{base[i % len(base)]} (variant {i})" for i in range(n)]


async def bare_loop(url: str, texts: list[str], style: str = "semaphore") -> list[str]:
    """What a user writes without prefab: AsyncOpenAI and a semaphore + gather, or 64 workers on one queue."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench")

    async def one(text: str) -> str:
        response = await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": text}],
            temperature=0.7,
            top_p=1.0,
            max_tokens=MAX_TOKENS,
            seed=0,
        )
        return response.choices[0].message.content

    try:
        if style == "semaphore":
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def bounded(text: str) -> str:
                async with semaphore:
                    return await one(text)

            return await asyncio.gather(*(bounded(t) for t in texts))
        answers: list[str | None] = [None] * len(texts)
        todo = iter(range(len(texts)))

        async def worker() -> None:
            for i in todo:
                answers[i] = await one(texts[i])

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return answers
    finally:
        await client.close()


def prefab_generate(url: str, texts: list[str], cache_dir: Path):
    import polars as pl

    from pipeline.core.cache import CallCache
    from pipeline.core.config import GeneratorSpec
    from pipeline.core.schema import TABLES
    from pipeline.core.store import prompt_id
    from pipeline.stages.generate import generate

    rows = [
        {
            "prompt_id": prompt_id([{"role": "user", "content": t}]),
            "messages": [{"role": "user", "content": t}],
            "source": "bench",
            "source_line": i,
            "category": None,
            "duplicate_of": None,
            "cluster": None,
        }
        for i, t in enumerate(texts)
    ]
    prompts = pl.DataFrame(rows, schema=TABLES["prompts"])
    spec = GeneratorSpec(
        name="bench",
        backend="openai",
        model="fake-model",
        base_url=url,
        concurrency=CONCURRENCY,
        temperatures=[0.7],
        n=1,
        max_tokens=MAX_TOKENS,
        top_p=1.0,
        seed=0,
    )
    cache = CallCache(cache_dir / "cache.sqlite")
    try:
        return generate(prompts, [spec], cache)
    finally:
        cache.close()


def bench_openai(n: int) -> list[dict]:
    server, url = start_server(LATENCY)
    texts = prompt_texts(n)
    best = {"bare": 0.0, "prefab": 0.0}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(bare_loop(url, texts[:256]))  # warm up: imports, connections
            prefab_generate(url, texts[:256], Path(tmp) / "warm")
            for round_ in range(ROUNDS):
                for style in ("semaphore", "workers"):  # the faster bare loop is the baseline
                    started = time.perf_counter()
                    answers = asyncio.run(bare_loop(url, texts, style))
                    rate = n / (time.perf_counter() - started)
                    best["bare"] = max(best["bare"], rate)
                    assert len(answers) == n and all(answers)
                    print(f"  bare AsyncOpenAI ({style}): {rate:.1f} req/s", flush=True)

                started = time.perf_counter()
                df = prefab_generate(url, texts, Path(tmp) / f"round{round_}")
                rate = n / (time.perf_counter() - started)
                best["prefab"] = max(best["prefab"], rate)
                print(f"  prefab generate: {rate:.1f} req/s", flush=True)
                assert df.height == n and df["error"].null_count() == n, df["error"].drop_nulls().head(3).to_list()
    finally:
        server.terminate()
        server.wait()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = best["prefab"] / best["bare"]
    return [
        {
            "name": f"openai backend: {n:,} prompts, concurrency {CONCURRENCY}, {int(LATENCY * 1000)} ms latency",
            "value": round(best["prefab"], 1),
            "baseline": round(best["bare"], 1),
            "ratio": round(ratio, 3),
            "target": ">= 0.9x bare AsyncOpenAI loop",
            "unit": "req/s",
            "ok": ratio >= 0.9,
        },
        {
            "name": "openai backend: peak memory (RSS, whole process)",
            "value": round(peak_mib, 1),
            "baseline": None,
            "ratio": None,
            "target": "< 1024 MiB",
            "unit": "MiB",
            "ok": peak_mib < 1024,
        },
    ]


def direct_generate(model, tokenizer, messages: list[list[dict]], batch_size: int, temperature: float) -> int:
    """Generated tokens (up to EOS) from plain model.generate calls, batches in input order."""
    import torch

    eos = model.generation_config.eos_token_id
    tokens = 0
    for start in range(0, len(messages), batch_size):
        texts = [
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in messages[start : start + batch_size]
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=LLM_MAX_TOKENS, pad_token_id=tokenizer.pad_token_id, **sampling)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            n = row.index(eos) + 1 if eos in row else len(row)
            tokens += n
            tokenizer.decode(row[:n], skip_special_tokens=True)
    return tokens


def bench_transformers(n: int, threads: int | None) -> list[dict]:
    import torch

    from pipeline.core.cache import CallCache
    from pipeline.core.config import ModelSpec
    from pipeline.models.llm import Request, call_llm
    from pipeline.models.llm_transformers import load_model

    if threads:
        torch.set_num_threads(threads)
    spec = ModelSpec(backend="transformers", model="embedded:smollm2", batch_size=8)
    model, tokenizer, device = load_model(spec.model, spec.device)
    messages = [[{"role": "user", "content": t}] for t in prompt_texts(n)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, temperature in (("sampled t=0.7", 0.7), ("greedy", 0.0)):
            direct_generate(model, tokenizer, messages[:8], spec.batch_size, temperature)  # warm up
            started = time.perf_counter()
            direct_tokens = direct_generate(model, tokenizer, messages, spec.batch_size, temperature)
            direct = direct_tokens / (time.perf_counter() - started)
            print(f"  direct model.generate ({label}): {direct:.1f} tok/s", flush=True)

            cache = CallCache(Path(tmp) / f"{label}.sqlite")
            requests = [
                Request(m, temperature=temperature, top_p=1.0, max_tokens=LLM_MAX_TOKENS, seed=i)
                for i, m in enumerate(messages)
            ]
            started = time.perf_counter()
            results = call_llm(spec, requests, cache, f"bench {label}")
            ours = sum(r.completion_tokens for r in results) / (time.perf_counter() - started)
            cache.close()
            print(f"  prefab call_llm ({label}): {ours:.1f} tok/s", flush=True)
            ratio = ours / direct
            rows.append(
                {
                    "name": f"transformers backend ({device}, {torch.get_num_threads()} threads): {n} prompts, batch "
                    f"{spec.batch_size}, max_tokens {LLM_MAX_TOKENS}, {label}",
                    "value": round(ours, 1),
                    "baseline": round(direct, 1),
                    "ratio": round(ratio, 3),
                    "target": ">= 0.8x direct model.generate",
                    "unit": "tok/s",
                    "ok": ratio >= 0.8,
                }
            )
    return rows


def main(
    n_prompts: int = N_PROMPTS,
    n_llm_prompts: int = N_LLM_PROMPTS,
    threads: int | None = None,
    transformers: bool = True,
    openai: bool = True,
) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    rows = bench_openai(n_prompts) if openai else []  # first: its peak RSS is measured before torch is loaded
    if transformers:
        rows += bench_transformers(
            n_llm_prompts, threads or (int(os.environ["BENCH_THREADS"]) if os.environ.get("BENCH_THREADS") else None)
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=N_PROMPTS)
    parser.add_argument("--llm-prompts", type=int, default=N_LLM_PROMPTS)
    parser.add_argument("--threads", type=int, help="torch CPU threads for (b)")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--no-openai", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = main(args.prompts, args.llm_prompts, args.threads, not args.no_transformers, not args.no_openai)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bench_generate (baseline measured in the same run)")
    for col in ("figure", "prefab", "baseline", "ratio", "target", "ok"):
        table.add_column(col)
    for r in result:
        table.add_row(
            r["name"],
            f"{r['value']} {r['unit']}",
            "" if r["baseline"] is None else f"{r['baseline']} {r['unit']}",
            "" if r["ratio"] is None else f"{r['ratio']:.3f}",
            r["target"],
            "yes" if r["ok"] else "NO",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
