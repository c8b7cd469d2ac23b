"""The run report's training section: loss curve, DPO reward accuracy, eval win rates, rounds."""

import base64
import html
import io
import json
from pathlib import Path

from pipeline.store import Run


def _metrics_files(run: Run) -> list[Path]:
    """metrics.json of the run's trained models (the train stage's model_dir first)."""
    found = []
    model_dir = run.stage_info("train").get("model_dir")
    if model_dir and (Path(model_dir) / "metrics.json").exists():
        found.append(Path(model_dir) / "metrics.json")
    found += [p for p in sorted((run.path / "train").glob("*/metrics.json")) if p not in found]
    return found


def _plot(history: list[dict], title: str) -> str:
    """Training (and eval) loss per step, and reward accuracy/margin for DPO, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if "loss" in h and "step" in h]
    evals = [h for h in history if "eval_loss" in h]
    dpo = [h for h in steps if "rewards/accuracies" in h]
    fig, axes = plt.subplots(1, 2 if dpo else 1, figsize=(10 if dpo else 5.5, 3.2), squeeze=False)
    ax = axes[0][0]
    ax.plot([h["step"] for h in steps], [h["loss"] for h in steps], marker=".", label="train loss")
    if evals:
        ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], marker="o", linestyle="--", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    if dpo:
        ax = axes[0][1]
        ax.plot([h["step"] for h in dpo], [h["rewards/accuracies"] for h in dpo], marker=".", label="reward accuracy (train batch)")
        ax.plot([h["step"] for h in dpo], [h.get("rewards/margins", 0) for h in dpo], marker=".", label="reward margin")
        eval_acc = [h for h in evals if "eval_rewards/accuracies" in h]
        if eval_acc:
            ax.plot([h["step"] for h in eval_acc], [h["eval_rewards/accuracies"] for h in eval_acc], marker="o", linestyle="--",
                    label="reward accuracy (test)")
        ax.axhline(0.5, color="grey", linewidth=0.5)
        ax.set_xlabel("step")
        ax.set_title("DPO implicit reward")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def _pct(d: dict | None) -> str:
    if not d or d.get("rate") is None:
        return "n/a"
    ci = d.get("ci")
    return f"{d['rate']:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")


def report_section(run: Run) -> str | None:
    """HTML for the run report; None when the run has trained nothing."""
    files = _metrics_files(run)
    rounds = run.manifest().get("rounds")
    if not files and not rounds:
        return None
    parts = ["<section><h2>Training</h2>"]
    for path in files:
        data = json.loads(path.read_text())
        keys = ["method", "base_model", "data", "steps", "first_loss", "last_loss", "train_loss", "reward_accuracy", "reward_margin",
                "eval_loss", "eval_rewards/accuracies", "train_tokens_per_s", "train_runtime_s", "lora"]
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(data.get(k))}</td></tr>" for k in keys if k in data)
        parts.append(f"<h3>{html.escape(str(path.parent))}</h3><table>{rows}</table>")
        if any("loss" in h for h in data.get("log_history", [])):
            img = _plot(data["log_history"], f"{data.get('method', '').upper()} on {Path(str(data.get('data', ''))).name}")
            parts.append(f'<img alt="training curves" src="data:image/png;base64,{img}">')
    eval_json = run.path / "eval" / "eval.json"
    if eval_json.exists():
        ev = json.loads(eval_json.read_text())
        rows = [("judge", ev["judge"]), ("prompts judged", ev["judged"]), ("win", _pct(ev.get("win"))), ("tie", _pct(ev.get("tie"))),
                ("loss", _pct(ev.get("loss"))), ("win rate (ties half)", _pct(ev.get("win_rate"))),
                ("length-controlled win rate", _pct(ev.get("length_controlled")))]
        if "reward_accuracy" in ev:
            rows.append(("implicit reward accuracy (test pairs)", _fmt(ev["reward_accuracy"]["accuracy"])))
        parts.append("<h3>Trained vs base (pairwise judge, both orders)</h3><table>"
                     + "".join(f"<tr><td>{html.escape(k)}</td><td>{v if isinstance(v, str) else _fmt(v)}</td></tr>" for k, v in rows) + "</table>")
    if rounds:
        head = "<tr><th>round</th><th>pairs</th><th>last loss</th><th>reward acc.</th><th>win rate</th><th>LC win rate</th></tr>"
        body = "".join(f"<tr><td>{r['round']}</td><td>{_fmt(r.get('pairs'))}</td><td>{_fmt(r.get('last_loss'))}</td>"
                       f"<td>{_fmt(r.get('reward_accuracy'))}</td><td>{_fmt(r.get('win_rate'))}</td><td>{_fmt(r.get('lc_win_rate'))}</td></tr>"
                       for r in rounds)
        parts.append(f"<h3>Iterative rounds</h3><table>{head}{body}</table>")
    parts.append("</section>")
    return "".join(parts)
