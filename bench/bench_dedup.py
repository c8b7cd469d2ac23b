"""Semantic dedup at scale: `pipeline.stages.dedup.near_duplicates` on 100,000 and 200,000 384-d vectors, 2 threads.

Targets: 100k under 60 s with peak memory under 2 GiB (an n x n similarity matrix would need 40 GB), and
doubling n less than triples the time. The vectors look like sentence embeddings: topic clusters with
typical neighbour cosines around 0.5-0.6, plus 1% planted near-duplicates (cosine ~0.97) whose recall is
printed. Each size runs in its own process, so its peak RSS is its own (data, index and all).

    python -m bench.bench_dedup        (BENCH_DEDUP_N=100000 to change the base size)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_N = int(os.environ.get("BENCH_DEDUP_N", "100000"))
THREADS = 2
THRESHOLD = 0.95


def vectors(n: int, d: int = 384, topics: int = 1000, dup_share: float = 0.01, seed: int = 0):
    """(unit float32 vectors, indices of the planted copies, indices of their originals); built in chunks, float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    n_dup = int(n * dup_share)
    n_orig = n - n_dup
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n_orig, 20_000):
        stop = min(start + 20_000, n_orig)
        noise = rng.standard_normal((stop - start, d), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        block = centers[rng.integers(0, topics, stop - start)] + 1.1 * noise
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    originals = rng.choice(n_orig, n_dup, replace=False)
    copies = out[originals] + 0.012 * rng.standard_normal((n_dup, d), dtype=np.float32)
    out[n_orig:] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return out, np.arange(n_orig, n), originals


def one(n: int) -> dict:
    """Run in a child process: time near_duplicates on n vectors; report time, peak RSS and recall."""
    import resource

    import faiss

    from pipeline.stages.dedup import near_duplicates

    faiss.omp_set_num_threads(THREADS)
    v, copies, originals = vectors(n)
    started = time.perf_counter()
    parent = near_duplicates(v, THRESHOLD)
    seconds = time.perf_counter() - started
    found = parent[copies] >= 0
    exact = parent[copies] == originals
    flagged = int((parent >= 0).sum())
    return {
        "n": n,
        "seconds": round(seconds, 2),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "recall": round(float(found.mean()), 4),
        "points_to_original": round(float(exact.mean()), 4),
        "flagged": flagged,
        "planted": len(copies),
    }


def run_child(n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_dedup", "--one", str(n)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> list[dict]:
    small, large = run_child(BASE_N), run_child(2 * BASE_N)
    growth = large["seconds"] / small["seconds"]
    rows = [
        {
            "name": f"dedup {BASE_N:,} x 384, {THREADS} threads",
            "value": small["seconds"],
            "baseline": None,
            "ratio": None,
            "target": "< 60 s",
            "unit": "s",
            "ok": small["seconds"] < 60,
        },
        {
            "name": f"peak memory at {BASE_N:,}",
            "value": small["peak_mib"],
            "baseline": None,
            "ratio": None,
            "target": "< 2048 MiB",
            "unit": "MiB",
            "ok": small["peak_mib"] < 2048,
        },
        {
            "name": f"time at {2 * BASE_N:,} vs {BASE_N:,}",
            "value": large["seconds"],
            "baseline": small["seconds"],
            "ratio": round(growth, 2),
            "target": "< 3x when n doubles",
            "unit": "s",
            "ok": growth < 3,
        },
        {
            "name": "recall of planted near-duplicates",
            "value": small["recall"],
            "baseline": None,
            "ratio": None,
            "target": "(reported)",
            "ok": None,
        },
    ]
    print(f"{'n':>8} {'seconds':>8} {'peak MiB':>9} {'recall':>7} {'-> orig':>7} {'flagged':>8} {'planted':>8}")
    for r in (small, large):
        print(
            f"{r['n']:>8} {r['seconds']:>8} {r['peak_mib']:>9} {r['recall']:>7} {r['points_to_original']:>7} "
            f"{r['flagged']:>8} {r['planted']:>8}"
        )
    print(f"doubling n: time x{growth:.2f} (target < 3)")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))))
    else:
        main()
