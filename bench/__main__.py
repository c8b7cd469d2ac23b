"""`make bench`: run every bench/bench_*.py, print one table, write bench/results.json.

Each benchmark module has `main() -> list[dict]` with rows {name, value, baseline, ratio, target, unit,
ok}; the baseline is measured in the same run. Each runs in its own process so peak-memory figures and
loaded models don't leak between them. `python -m bench NAME...` runs a subset.
"""

import importlib
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent


def _run(module: str, queue) -> None:
    try:
        queue.put(("ok", importlib.import_module(f"bench.{module}").main()))
    except BaseException as e:  # report and go on with the other benchmarks
        queue.put(("error", f"{type(e).__name__}: {e}"))


def run_one(module: str) -> list[dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(module, queue))
    started = time.time()
    proc.start()
    proc.join()
    status, rows = queue.get() if not queue.empty() else ("error", f"exit code {proc.exitcode}")
    if status == "error":
        return [{"bench": module, "name": "error", "value": None, "baseline": None, "ratio": None, "target": rows, "ok": False}]
    for row in rows:
        row.setdefault("bench", module)
        row.setdefault("seconds", round(time.time() - started, 1))
    return rows


def main(argv: list[str]) -> int:
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if argv:
        modules = [m for m in modules if any(a in m for a in argv)]
    rows = []
    for module in modules:
        print(f"== {module}", flush=True)
        rows.extend(run_one(module))
    table = Table(title="prefab benchmarks (baseline measured in the same run)")
    for col in ("bench", "figure", "value", "baseline", "ratio", "target", "ok"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["bench"].removeprefix("bench_"), r["name"], _fmt(r.get("value"), r.get("unit")), _fmt(r.get("baseline"), r.get("unit")),
                      _fmt(r.get("ratio")), str(r.get("target", "")), {True: "yes", False: "NO"}.get(r.get("ok"), "?"))
    Console().print(table)
    (HERE / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"wrote {HERE / 'results.json'}")
    return 0


def _fmt(value, unit=None) -> str:
    if value is None:
        return ""
    text = f"{value:,.3g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
