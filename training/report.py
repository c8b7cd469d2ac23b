"""The run report's training section: loss curve, DPO reward accuracy, eval win rates, rounds.

pipeline/stages/report.py collects `sections` from this module through the `prefab.report` entry point (pyproject.toml).
"""

import json
from pathlib import Path

from pipeline.core.store import Run


def _metrics_files(run: Run) -> list[Path]:
    """metrics.json of the run's trained models (the train stage's model_dir first)."""
    found = []
    model_dir = run.stage_info("train").get("model_dir")
    if model_dir and (Path(model_dir) / "metrics.json").exists():
        found.append(Path(model_dir) / "metrics.json")
    found += [p for p in sorted((run.path / "train").glob("*/metrics.json")) if p not in found]
    return found


def _curves(history: list[dict], title: str) -> str:
    """Training (and eval) loss per step; reward accuracy and margin per step for DPO."""
    from pipeline.stages.report import (  # start-up: pydantic, rich.console, rich.progress, rich.table, yaml
        figure,
        plot_html,
    )

    steps = [h for h in history if "loss" in h and "step" in h]
    evals = [h for h in history if "eval_loss" in h]
    dpo = [h for h in steps if "rewards/accuracies" in h]
    fig, axes = figure(ncols=2 if dpo else 1, width=5.5)
    ax = axes[0] if dpo else axes
    ax.plot([h["step"] for h in steps], [h["loss"] for h in steps], marker=".", label="train loss")
    if evals:
        ax.plot(
            [h["step"] for h in evals], [h["eval_loss"] for h in evals], marker="o", linestyle="--", label="eval loss"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    if dpo:
        ax = axes[1]
        ax.plot(
            [h["step"] for h in dpo],
            [h["rewards/accuracies"] for h in dpo],
            marker=".",
            label="reward accuracy (train batch)",
        )
        ax.plot([h["step"] for h in dpo], [h.get("rewards/margins", 0) for h in dpo], marker=".", label="reward margin")
        eval_acc = [h for h in evals if "eval_rewards/accuracies" in h]
        if eval_acc:
            ax.plot(
                [h["step"] for h in eval_acc],
                [h["eval_rewards/accuracies"] for h in eval_acc],
                marker="o",
                linestyle="--",
                label="reward accuracy (test pairs)",
            )
        ax.axhline(0.5, color="grey", linewidth=0.5)
        ax.set_xlabel("step")
        ax.set_title("DPO implicit reward")
        ax.legend(fontsize=8)
    return plot_html(fig, "training curves")


def _pct(d: dict | None) -> str:
    if not d or d.get("rate") is None:
        return "n/a"
    ci = d.get("ci")
    return f"{d['rate']:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")


KEYS = [
    "method",
    "base_model",
    "data",
    "steps",
    "first_loss",
    "last_loss",
    "train_loss",
    "reward_accuracy",
    "reward_margin",
    "eval_loss",
    "eval_rewards/accuracies",
    "train_tokens_per_s",
    "train_runtime_s",
    "lora",
]


def training_section(run: Run) -> str | None:
    """Trained models of the run (metrics.json), the eval against the base, and iterative rounds;
    None before training."""
    from pipeline.stages.report import (  # start-up: pydantic, rich.console, rich.progress, rich.table, yaml
        metrics_html,
        section,
        table_html,
    )

    files = _metrics_files(run)
    rounds = run.manifest().get("rounds")
    if not files and not rounds:
        return None
    parts = []
    for path in files:
        data = json.loads(path.read_text())
        parts.append(f"<h3>{path.parent}</h3>")
        parts.append(table_html([{"metric": k, "value": data[k]} for k in KEYS if k in data]))
        if any("loss" in h for h in data.get("log_history", [])):
            parts.append(
                _curves(
                    data["log_history"], f"{data.get('method', '').upper()} on {Path(str(data.get('data', ''))).name}"
                )
            )
    eval_json = run.path / "eval" / "eval.json"
    if eval_json.exists():
        ev = json.loads(eval_json.read_text())
        parts.append("<h3>Trained model vs its base (pairwise judge, both orders)</h3>")
        parts.append(
            metrics_html(
                {
                    "win rate (ties half)": _pct(ev.get("win_rate")),
                    "length-controlled": _pct(ev.get("length_controlled")),
                    "prompts judged": ev["judged"],
                }
            )
        )
        rows = [
            {"": k, "rate [95% CI]": _pct(ev.get(k)), "count": (ev.get(k) or {}).get("count")}
            for k in ("win", "tie", "loss")
        ]
        if "reward_accuracy" in ev:
            rows.append(
                {
                    "": "implicit reward accuracy (test pairs)",
                    "rate [95% CI]": ev["reward_accuracy"]["accuracy"],
                    "count": ev["reward_accuracy"]["pairs"],
                }
            )
        parts.append(table_html(rows))
        parts.append(
            f"<p>judge {ev['judge']}; mean answer length base {ev['mean_length']['base']}, "
            f"candidate {ev['mean_length']['candidate']} tokens</p>"
        )
    if rounds:
        parts.append("<h3>Iterative rounds</h3>")
        parts.append(
            table_html(
                [
                    {
                        k: r.get(k)
                        for k in (
                            "round",
                            "pairs",
                            "last_loss",
                            "reward_accuracy",
                            "test_reward_accuracy",
                            "win_rate",
                            "lc_win_rate",
                        )
                    }
                    for r in rounds
                ]
            )
        )
    return section("Training", *parts)


def report_section(run: Run) -> str | None:
    return training_section(run)


sections = [training_section]
