"""`make bench`: run every bench/bench_*.py, print one table, write bench/results.json.

Each benchmark module has `main() -> list[dict]` with rows {name, value, baseline, ratio, target, unit,
ok}; the baseline is measured in the same run. Each runs in its own process so peak-memory figures and
loaded models don't leak between them. `python -m bench NAME...` runs a subset.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent


CHILD = (
    "import importlib, json, sys; rows = importlib.import_module('bench.' + sys.argv[1]).main(); "
    "open(sys.argv[2], 'w').write(json.dumps(rows, default=str))"
)


def run_one(module: str) -> list[dict]:
    """Run one benchmark in a fresh interpreter; its rows come back through a JSON file."""
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        proc = subprocess.run([sys.executable, "-c", CHILD, module, str(out)], cwd=HERE.parent)
        if proc.returncode != 0 or not out.exists():
            return [
                {
                    "bench": module,
                    "name": "error",
                    "value": None,
                    "baseline": None,
                    "ratio": None,
                    "target": f"exit code {proc.returncode}",
                    "ok": False,
                }
            ]
        rows = json.loads(out.read_text())
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
        table.add_row(
            r["bench"].removeprefix("bench_"),
            r["name"],
            _fmt(r.get("value"), r.get("unit")),
            _fmt(r.get("baseline"), r.get("unit")),
            _fmt(r.get("ratio")),
            str(r.get("target", "")),
            {True: "yes", False: "NO"}.get(r.get("ok"), "?"),
        )
    Console(width=200).print(table)
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
