"""Scale: the `prefab` CLI (ingest, generate, judge) on 10,000 and 100,000 prompts, two temperatures, against the
local OpenAI-compatible server (tests/openai_server.py in its own process, 20 ms per answer, structured JSON for
the judge), concurrency 64.

Per size: wall time per call, peak RSS of the `prefab run` process (wait4's ru_maxrss), and calls per second of
the client's CPU time (user + sys of that process), next to a bare `AsyncOpenAI` loop (semaphore + gather, SDK
defaults, its own process) over 20,000 calls measured in the same run. Targets: RSS at 100k within 1.2x of
10k and under 1 GiB; time per call at 100k within 1.2x of 10k.

    python bench/bench_scale.py            # BENCH_SCALE_SIZES=10000,100000
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = [int(n) for n in os.environ.get("BENCH_SCALE_SIZES", "10000,100000").split(",")]
BARE_CALLS = int(os.environ.get("BENCH_SCALE_BARE_CALLS", "20000"))
CONCURRENCY = 64
LATENCY = 0.02

BARE = """
import asyncio, sys, openai
url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    client = openai.AsyncOpenAI(base_url=url, api_key="bench")
    semaphore = asyncio.Semaphore(concurrency)
    async def one(i):
        async with semaphore:
            r = await client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": f"Bare prompt {i}"}],
                temperature=0.3, max_tokens=64, seed=0,
            )
            return r.choices[0].message.content
    answers = await asyncio.gather(*(one(i) for i in range(n)))
    assert all(answers)
    await client.close()
asyncio.run(main())
"""


def measured(args: list[str], **kw) -> dict:
    """Run a process; its wall seconds, CPU seconds (user + sys) and peak RSS (MiB), from wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = Path(kw["stderr"].name).read_text()[-3000:] if hasattr(kw.get("stderr"), "name") else ""
        raise RuntimeError(f"{args[:4]} exited {proc.returncode}: {err}")
    return {
        "wall_s": time.perf_counter() - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
    }


def write_run(tmp: Path, url: str, n: int) -> Path:
    base = [
        json.loads(line)["prompt"]
        for line in (ROOT / "data" / "prompts" / "single_turn.jsonl").read_text().splitlines()
        if line.strip()
    ]
    prompts = tmp / f"prompts-{n}.jsonl"
    with prompts.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{base[i % len(base)]} (variant {i})"}) + "\n")
    model = {"backend": "openai", "base_url": url, "concurrency": CONCURRENCY, "max_retries": 2, "timeout": 30}
    config = {
        "run": str(tmp / f"run-{n}"),
        "stages": ["ingest", "generate", "judge"],
        "ingest": {"paths": [str(prompts)]},
        "generate": {
            "generators": [{**model, "name": "gen", "model": "gen-model", "temperatures": [0.3, 1.0], "max_tokens": 64}]
        },
        "judge": {
            "judges": [{**model, "name": "judge", "model": "judge-model"}],
            "max_tokens": 128,
            "aspects": [{"name": "helpfulness"}, {"name": "honesty"}],
            "pairwise": False,
        },
    }
    path = tmp / f"config-{n}.json"
    path.write_text(json.dumps(config))
    return path


def main() -> list[dict]:
    import re

    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "openai_server.py"),
            "--latency",
            str(LATENCY),
            "--no-bodies",
            "--structured",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = re.match(r"READY (\S+)", server.stdout.readline()).group(1)
    env = {**os.environ, "PREFAB_HOME": os.environ.get("PREFAB_HOME", str(ROOT / ".prefab"))}
    results = {}
    try:
        bare = measured([sys.executable, "-c", BARE, url, str(BARE_CALLS), str(CONCURRENCY)], cwd=ROOT)
        bare_per_core = BARE_CALLS / bare["cpu_s"]
        print(
            f"  bare AsyncOpenAI: {BARE_CALLS / bare['wall_s']:.0f} calls/s, {bare_per_core:.0f} calls per CPU-second",
            flush=True,
        )
        with tempfile.TemporaryDirectory() as tmp:
            for n in SIZES:
                config = write_run(Path(tmp), url, n)
                with open(Path(tmp) / f"stderr-{n}.txt", "w") as err:
                    got = measured(
                        [sys.executable, "-m", "pipeline.commands.cli", "run", str(config)],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                calls = n * 2 * 2  # two temperatures, then a judgment of each candidate
                manifest = json.loads((Path(tmp) / f"run-{n}" / "manifest.json").read_text())["stages"]
                assert manifest["generate"]["ok"] == n * 2 and manifest["judge"]["scored"] == n * 2, manifest
                got.update(calls=calls, per_call_ms=1000 * got["wall_s"] / calls, per_core=calls / got["cpu_s"])
                results[n] = got
                print(
                    f"  prefab run, {n:,} prompts ({calls:,} calls): {got['wall_s']:.0f} s, {got['per_call_ms']:.2f} "
                    f"ms/call, peak RSS {got['rss_mib']:.0f} MiB, {got['per_core']:.0f} calls per CPU-second",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()
    small, large = results[SIZES[0]], results[SIZES[-1]]
    rss_ratio, time_ratio = large["rss_mib"] / small["rss_mib"], large["per_call_ms"] / small["per_call_ms"]
    rows = [
        {
            "name": f"peak RSS of `prefab run` (ingest, generate, judge): {SIZES[-1]:,} vs {SIZES[0]:,} prompts",
            "value": round(large["rss_mib"], 1),
            "baseline": round(small["rss_mib"], 1),
            "ratio": round(rss_ratio, 3),
            "target": "<= 1.2x and < 1024 MiB",
            "unit": "MiB",
            "ok": rss_ratio <= 1.2 and large["rss_mib"] < 1024,
        },
        {
            "name": f"wall time per call: {SIZES[-1]:,} vs {SIZES[0]:,} prompts",
            "value": round(large["per_call_ms"], 3),
            "baseline": round(small["per_call_ms"], 3),
            "ratio": round(time_ratio, 3),
            "target": "<= 1.2x",
            "unit": "ms",
            "ok": time_ratio <= 1.2,
        },
    ]
    for n, got in results.items():
        ratio = got["per_core"] / bare_per_core
        rows.append(
            {
                "name": f"client calls per CPU-second, {n:,} prompts, vs a bare AsyncOpenAI loop ({BARE_CALLS:,} "
                "calls)",
                "value": round(got["per_core"], 1),
                "baseline": round(bare_per_core, 1),
                "ratio": round(ratio, 3),
                "target": "printed (no target)",
                "unit": "calls/CPU-s",
                "ok": True,
            }
        )
    return rows


if __name__ == "__main__":
    for row in main():
        print(json.dumps(row))
