"""DPO training throughput on a GPU: `prefab train dpo` against a plain TRL script with the same settings.

Both train the same model on the same exported file (a trl-dpo export of a synthetic run) with the same
DPOConfig, each in its own process, alternating, ROUNDS times each; the best run of each side counts
(machines are shared). Throughput is tokens per second of trainer.train() as TRL counts them (the
`num_tokens` it logs, over `train_runtime`), so dataset loading and tokenization are outside both
measurements. Target: prefab reaches at least 0.95x the plain script. Without CUDA it skips and says so.

    python bench/bench_train_gpu.py            # or: python -m bench train_gpu
    BENCH_TRAIN_MODEL=HuggingFaceTB/SmolLM2-360M-Instruct BENCH_TRAIN_STEPS=50 python bench/bench_train_gpu.py
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = os.environ.get("BENCH_TRAIN_MODEL", "embedded:smollm2")
STEPS = int(os.environ.get("BENCH_TRAIN_STEPS", "40"))
PAIRS = int(os.environ.get("BENCH_TRAIN_PAIRS", "512"))
ROUNDS = int(os.environ.get("BENCH_TRAIN_ROUNDS", "2"))
SETTINGS = {
    "max_steps": STEPS,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-7,
    "beta": 0.1,
    "max_length": 512,
    "bf16": True,
    "activation_checkpointing": False,
    "logging_steps": 5,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
    "lr_scheduler_type": "constant",
}

PLAIN_TRL = """
import json, sys
from datasets import load_dataset
from trl import DPOConfig, DPOTrainer

data, model, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
dataset = load_dataset("json", data_files=data, split="train")
trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=out, **settings), train_dataset=dataset)
trainer.train()
print("RESULT " + json.dumps(trainer.state.log_history))
"""


def tokens_per_second(history: list[dict]) -> float:
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    return tokens[-1] / runtime


def make_data(tmp: Path) -> Path:
    """A trl-dpo export of a synthetic run (answers of a few hundred tokens), written by prefab export."""
    import polars as pl

    sys.path.insert(0, str(ROOT / "tests"))
    from labeling_runs import make_run

    from training.export.stage import export
    from training.settings import ExportConfig

    run, _ = make_run(tmp / "run", PAIRS, human_every=PAIRS + 1, long_text=1200)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    export(run, ExportConfig(formats=["trl-dpo"], test_share=0.0))
    return run.path / "exports" / "dpo_train.jsonl"


def run_prefab(data: Path, out: Path) -> float:
    sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        "dpo",
        "--data",
        str(data),
        "--model",
        MODEL,
        "--output-dir",
        str(out),
        *sets,
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["train_tokens_per_s"]


def run_plain(data: Path, out: Path) -> float:
    from pipeline.models.embedded import resolve_llm

    cmd = [sys.executable, "-c", PLAIN_TRL, str(data), resolve_llm(MODEL), str(out), json.dumps(SETTINGS)]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return tokens_per_second(json.loads(line.removeprefix("RESULT ")))


def main() -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        message = "skipped: no CUDA GPU on this machine (run it on a GPU host: python bench/bench_train_gpu.py)"
        print(message)
        return [
            {
                "name": "DPO train tokens/s vs plain TRL",
                "value": None,
                "baseline": None,
                "ratio": None,
                "target": message,
                "unit": "tok/s",
                "ok": None,
            }
        ]
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp)
        for r in range(ROUNDS):
            plain.append(run_plain(data, tmp / f"plain-{r}"))
            ours.append(run_prefab(data, tmp / f"prefab-{r}"))
            print(f"round {r + 1}: prefab {ours[-1]:.0f} tok/s, plain TRL {plain[-1]:.0f} tok/s", flush=True)
    best, base = max(ours), max(plain)
    ratio = best / base
    print(
        f"{torch.cuda.get_device_name()}: prefab train dpo {best:.0f} tok/s, plain TRL {base:.0f} tok/s, "
        f"ratio {ratio:.3f}"
    )
    return [
        {
            "name": f"DPO train tokens/s ({MODEL}, bs 8, len 512, {STEPS} steps)",
            "value": round(best),
            "baseline": round(base),
            "ratio": round(ratio, 3),
            "target": "ratio >= 0.95",
            "unit": "tok/s",
            "ok": ratio >= 0.95,
        }
    ]


if __name__ == "__main__":
    rows = main()
    print(json.dumps(rows, indent=1))
