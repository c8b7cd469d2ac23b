"""Code runs per second in the sandbox (pipeline/sandbox/bwrap.py) vs a bare
`subprocess.run([sys.executable, "-c", ...])` of the same code and tests, side by side in one run: one at a time, then
concurrently with run_many.

The bare run is what a verifier without isolation would do: one interpreter per candidate, no namespaces, no
limits, no per-test results. The sandbox adds bubblewrap (namespaces, mounts, its PID namespace's init), setpriv
when prefab is root, and the runner's limits and per-test results; the target is at least half the bare rate (model
calls, not code runs, bound a pipeline).

    python -m bench.bench_sandbox        (BENCH_SANDBOX_RUNS=200 to change the count)
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from pipeline.sandbox.bwrap import run, run_many

RUNS = int(os.environ.get("BENCH_SANDBOX_RUNS", "100"))
WORKERS = os.cpu_count() or 1
CODE = """
def merge_intervals(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
"""
TESTS = """
assert merge_intervals([]) == []
assert merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]]) == [[1, 6], [8, 10], [15, 18]]
assert merge_intervals([[5, 7], [1, 5]]) == [[1, 7]]

def test_many():
    assert merge_intervals([[i, i + 1] for i in range(0, 2000, 2)]) == [[i, i + 1] for i in range(0, 2000, 2)]
"""


def bare(_=None) -> bool:
    proc = subprocess.run([sys.executable, "-c", CODE + TESTS + "\ntest_many()\n"], capture_output=True, timeout=30)
    return proc.returncode == 0


def side_by_side(sandbox, baseline, n: int, block: int = 10) -> tuple[float, float]:
    """Runs per second of each, timed in alternating blocks so a busy neighbour slows both alike."""
    spent = [0.0, 0.0]
    for _ in range(max(n // block, 1)):
        for i, fn in enumerate((sandbox, baseline)):
            started = time.perf_counter()
            fn(block)
            spent[i] += time.perf_counter() - started
    done = max(n // block, 1) * block
    return done / spent[0], done / spent[1]


def pooled_bare(n: int) -> list[bool]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(bare, range(n)))


def main() -> list[dict]:
    assert bare() and run(CODE, TESTS).score == 1.0  # both run the code to a pass, and warm the page cache
    serial = side_by_side(lambda n: [run(CODE, TESTS) for _ in range(n)], lambda n: [bare() for _ in range(n)], RUNS)
    pooled = side_by_side(
        lambda n: run_many([(CODE, TESTS)] * n, workers=WORKERS), pooled_bare, RUNS, block=4 * WORKERS
    )
    rows = []
    for label, (sandbox, base) in (("one at a time", serial), (f"{WORKERS} at a time", pooled)):
        ratio = sandbox / base
        rows.append(
            {
                "name": f"sandbox code runs/s, {label}",
                "value": round(sandbox, 1),
                "baseline": round(base, 1),
                "ratio": round(ratio, 2),
                "target": ">= 0.5x bare subprocess.run",
                "unit": "runs/s",
                "ok": ratio >= 0.5,
            }
        )
        print(
            f"{label:>14}: sandbox {sandbox:6.1f} runs/s   bare subprocess.run {base:6.1f} runs/s   ratio {ratio:.2f}"
        )
    return rows


if __name__ == "__main__":
    main()
