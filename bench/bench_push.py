"""Pushing 10,000 pairs to Argilla: `prefab push` vs the SDK's own `dataset.records.log` (default settings).

Both start from the same run tables and end with the same 10,000 records (same settings, fields,
metadata, vectors and suggestions) in two fresh datasets of the same server, measured one after the
other in this process. The SDK side is timed from the same point: building its `rg.Record` objects
from the run's rows, then `records.log(records)`. A second push of the same pairs (all updates, no
duplicates) is timed too.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

N_PAIRS = int(os.environ.get("BENCH_PUSH_PAIRS", "10000"))
ROOT = Path(__file__).resolve().parent.parent


def sdk_records(records: list[dict], dataset) -> list:
    """The same records as rg.Record objects, the way an SDK user writes them."""
    import argilla as rg

    out = []
    for r in records:
        out.append(rg.Record(
            id=r["external_id"], fields=r["fields"], metadata=r["metadata"],
            vectors=r.get("vectors") or {},
            suggestions=[rg.Suggestion(question_name=s["question_name"], value=s["value"], score=s["score"], agent=s["agent"])
                         for s in r["suggestions"]],
        ))
    return out


def main() -> list[dict]:
    import argilla as rg

    from labeling import dataset as ds
    from labeling.push import connect, push
    from labeling.server import ensure_running

    sys.path.insert(0, str(ROOT / "tests"))
    from labeling_runs import make_run

    ensure_running()
    client = connect()
    stamp = time.strftime("%Y%m%d%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        run, config = make_run(Path(tmp) / f"bench-push-{stamp}", N_PAIRS, human_every=1, long_text=400)

        started = time.perf_counter()
        counts = push(run, config, client)
        ours = time.perf_counter() - started
        assert counts["created"] == N_PAIRS, counts

        started = time.perf_counter()
        again = push(run, config, client)
        ours_again = time.perf_counter() - started
        assert again["updated"] == N_PAIRS, again

        # the SDK baseline: same settings and rows, a dataset of its own
        name = f"bench-push-sdk-{stamp}"
        vectors, dims = ds.prompt_vectors(run.read("embeddings"), None)
        dataset = rg.Dataset(name=name, workspace=config.labeling.workspace, settings=ds.settings(config.labeling, dims, client),
                             client=client).create()
        started = time.perf_counter()
        records = ds.build_records(run.read("pairs"), run.read("prompts"), run.read("candidates"), judgments=run.read("judgments"),
                                   pair_judgments=run.read("pair_judgments"), vectors=vectors, config=config)
        dataset.records.log(sdk_records(records, dataset))
        sdk = time.perf_counter() - started

        total = client.api.http_client.get(f"/api/v1/datasets/{counts['dataset_id']}/records", params={"limit": 1}).json()["total"]
        sdk_total = client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 1}).json()["total"]
        for name_ in (counts["dataset"], name):
            client.datasets(name=name_, workspace=config.labeling.workspace).delete()

    return [
        {"name": f"push {N_PAIRS:,} pairs (s)", "value": round(ours, 2), "baseline": round(sdk, 2), "ratio": round(sdk / ours, 2),
         "target": "ratio >= 1 (as fast as records.log)", "unit": "s", "ok": sdk / ours >= 1.0},
        {"name": "push rate (pairs/s)", "value": round(N_PAIRS / ours), "baseline": round(N_PAIRS / sdk), "ratio": round(sdk / ours, 2),
         "target": "", "unit": "/s", "ok": None},
        {"name": f"re-push {N_PAIRS:,} pairs, all updates (s)", "value": round(ours_again, 2), "baseline": round(sdk, 2),
         "ratio": round(sdk / ours_again, 2), "target": "no duplicates", "unit": "s",
         "ok": total == N_PAIRS and sdk_total == N_PAIRS},
    ]


if __name__ == "__main__":
    for row in main():
        print(row)
