"""Pushing 10,000 pairs to Argilla: `prefab push` vs the SDK's own `dataset.records.log` (default settings).

Both start from the same run tables and end with the same 10,000 records (same settings, fields,
metadata, vectors and suggestions) in two fresh datasets of one server, after a warm-up, in blocks of
2,500 pairs whose order flips each block (ours-SDK, SDK-ours, ...). The SDK side is timed from the same point:
building the records from the run's tables, making its `rg.Record` objects, then `records.log`. A second push
(updates, no duplicates) is timed on a tenth of the pairs. BENCH_PUSH_PAIRS changes the size.
"""

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

N_PAIRS = int(os.environ.get("BENCH_PUSH_PAIRS", "10000"))
BLOCK = 2500  # 4 blocks: ours-SDK, SDK-ours, ours-SDK, SDK-ours
ROOT = Path(__file__).resolve().parent.parent


def sdk_records(records: list[dict]) -> list:
    """The same records as rg.Record objects, the way an SDK user writes them."""
    import argilla as rg

    return [
        rg.Record(
            id=r["external_id"],
            fields=r["fields"],
            metadata=r["metadata"],
            vectors=r.get("vectors") or {},
            suggestions=[
                rg.Suggestion(question_name=s["question_name"], value=s["value"], score=s["score"], agent=s["agent"])
                for s in r["suggestions"]
            ],
        )
        for r in records
    ]


def total(client, dataset_id) -> int:
    return client.api.http_client.get(f"/api/v1/datasets/{dataset_id}/records", params={"limit": 1}).json()["total"]


def measure(client, tmp: Path) -> list[dict]:
    import argilla as rg

    from labeling import dataset as ds
    from labeling.push import ensure_workspace, push

    sys.path.insert(0, str(ROOT / "tests"))
    from labeling_runs import make_run

    stamp = time.strftime("%H%M%S")
    run, config = make_run(tmp / f"bench-push-{stamp}", N_PAIRS, human_every=1, long_text=400)
    pairs = run.read("pairs")
    vectors, dims = ds.prompt_vectors(run.read("embeddings"), None)
    ensure_workspace(client, config.labeling.workspace)

    def sdk_dataset(name):
        return rg.Dataset(
            name=name,
            workspace=config.labeling.workspace,
            settings=ds.settings(config.labeling, dims, client),
            client=client,
        ).create()

    def ours(block) -> tuple[float, dict]:
        run.write("pairs", block)
        started = time.perf_counter()
        counts = push(run, config, client)
        return time.perf_counter() - started, counts

    def sdk(block, dataset) -> float:
        started = time.perf_counter()
        records = ds.build_records(
            block,
            run.read("prompts"),
            run.read("candidates"),
            pair_judgments=run.read("pair_judgments"),
            vectors=vectors,
            config=config,
        )
        dataset.records.log(sdk_records(records))
        return time.perf_counter() - started

    # warm the server up on throwaway datasets: the first requests of a fresh server are slow
    warm = pairs.head(min(500, N_PAIRS))
    sdk(warm, sdk_dataset(f"bench-push-warmup-{stamp}"))
    config.labeling.dataset = f"bench-push-warmup-ours-{stamp}"
    ours(warm)
    config.labeling.dataset = f"bench-push-ours-{stamp}"
    dataset = sdk_dataset(f"bench-push-sdk-{stamp}")

    # blocks of 2,500 pairs, the order flipping each block (ours-SDK, SDK-ours, ...): other processes on
    # this machine come and go, and alternating cancels their drift
    ours_s = sdk_s = 0.0
    created = 0
    blocks = [pairs.slice(i, BLOCK) for i in range(0, N_PAIRS, BLOCK)]
    for i, block in enumerate(blocks):
        if i % 2:
            sdk_block = sdk(block, dataset)
        seconds, counts = ours(block)
        if not i % 2:
            sdk_block = sdk(block, dataset)
        ours_s, sdk_s, created = ours_s + seconds, sdk_s + sdk_block, created + counts["created"]
        print(f"block {i}: prefab push {seconds:.1f}s, records.log {sdk_block:.1f}s", file=sys.stderr, flush=True)
    assert created == N_PAIRS, created
    ours_id = counts["dataset_id"]

    # pushing again updates: re-push a tenth of the pairs (all already there)
    subset = pairs.head(max(1, N_PAIRS // 10))
    ours_again, again = ours(subset)
    assert (again["created"], again["updated"]) == (0, subset.height), again

    ours_total, sdk_total = total(client, ours_id), total(client, dataset.id)
    return [
        {
            "name": f"push {N_PAIRS:,} pairs",
            "value": round(ours_s, 2),
            "baseline": round(sdk_s, 2),
            "ratio": round(sdk_s / ours_s, 2),
            "target": "ratio >= 1 (vs SDK records.log)",
            "unit": "s",
            "ok": sdk_s / ours_s >= 1.0,
        },
        {
            "name": "push rate",
            "value": round(N_PAIRS / ours_s),
            "baseline": round(N_PAIRS / sdk_s),
            "ratio": round(sdk_s / ours_s, 2),
            "target": "",
            "unit": "pairs/s",
            "ok": None,
        },
        {
            "name": f"re-push {subset.height:,} of them (updates)",
            "value": round(ours_again, 2),
            "baseline": None,
            "ratio": None,
            "target": f"still {N_PAIRS:,} records, no duplicates",
            "unit": "s",
            "ok": ours_total == N_PAIRS and sdk_total == N_PAIRS,
        },
    ]


def main() -> list[dict]:
    from labeling.launcher import accounts, bootstrap, lifecycle, processes

    # a SIGTERM must still stop the server this bench started (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as tmp:
        if bootstrap.external():  # ARGILLA_API_URL names a server: measure there
            return measure(accounts.client(), Path(tmp))
        home = Path(tmp) / "labeling"  # else a server of our own, so nothing else competes for it
        lifecycle.up(home=home, port=processes.free_port())
        try:
            return measure(accounts.client(home), Path(tmp))
        finally:
            lifecycle.down(home)


if __name__ == "__main__":
    for row in main():
        print(row)
