"""`prefab report`: one self-contained report.html per run (plots as embedded PNGs), for a browser or a CI artifact.

The report is a list of section functions. Each takes the Run and returns an HTML fragment, or None when
the tables it needs are absent, so a report works at any point of a run. Another package adds sections by
registering a list of them under the `prefab.report` entry point (pipeline/core/registry.py; labeling.report and
training.report do) and builds them with the helpers here:

    from pipeline.stages.report import figure, legend, plot_html, section, table_html

    def labels_section(run):
        if not run.has("labels"):
            return None
        fig, ax = figure()
        ax.hist(...)
        return section("Labels", table_html([{"annotator": "a", "labels": 10}]), plot_html(fig))

    sections = [labels_section]
"""

import base64
import html
import io
import json
import math
from datetime import UTC, datetime

import polars as pl

from pipeline.core import registry
from pipeline.core.config import Config
from pipeline.core.progress import console
from pipeline.core.queries import active_prompts
from pipeline.core.stage import Stage
from pipeline.core.stats import series_mean
from pipeline.core.store import Run, atomic_write_text

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]


# ---------------------------------------------------------------- helpers for sections


def figure(ncols: int = 1, width: float = 6.0, height: float = 3.2):
    """A matplotlib figure with ncols axes side by side: a plain Figure, no pyplot (no display, no global state,
    and a third less import time for `prefab report`)."""
    from matplotlib.figure import Figure  # start-up: matplotlib

    fig = Figure(figsize=(width * ncols, height))
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, (axes[0][0] if ncols == 1 else list(axes[0]))


def plot_html(fig, alt: str = "plot") -> str:
    """The figure as an inline base64 PNG <img>."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def legend(ax, **kw) -> None:
    """A legend only when something is labelled (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def table_html(rows: list[dict] | pl.DataFrame, max_rows: int = 50) -> str:
    if isinstance(rows, pl.DataFrame):
        rows = rows.head(max_rows).to_dicts()
    rows = rows[:max_rows]
    if not rows:
        return "<p><em>none</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(title: str, *parts: str, anchor: str | None = None) -> str:
    anchor = anchor or title.lower().replace(" ", "-")
    return (
        f'<section id="{html.escape(anchor)}"><h2>{html.escape(title)}</h2>{"".join(p for p in parts if p)}</section>'
    )


def metrics_html(values: dict) -> str:
    """A row of big numbers."""
    cells = "".join(
        f'<div class="metric"><div class="value">{html.escape(_fmt(v))}</div>'
        f'<div class="label">{html.escape(str(k))}</div></div>'
        for k, v in values.items()
        if v is not None
    )
    return f'<div class="metrics">{cells}</div>' if cells else ""


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _stage(run: Run, name: str) -> dict:
    return run.stage_info(name)


# ---------------------------------------------------------------- sections


def overview_section(run: Run) -> str | None:
    stages = run.manifest().get("stages", {})
    rows = [
        {
            "stage": s,
            "status": i.get("status"),
            "seconds": i.get("seconds"),
            "counts": ", ".join(
                f"{k}={_fmt(v)}"
                for k, v in i.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds"
            ),
        }
        for s, i in stages.items()
    ]
    tables = {
        name: run.height(name) for name in ("prompts", "candidates", "judgments", "pairs", "labels") if run.has(name)
    }
    return section("Overview", metrics_html(tables), table_html(rows) if rows else "")


def prompts_section(run: Run) -> str | None:
    if not run.has("prompts"):
        return None
    prompts = run.read("prompts")
    active = active_prompts(prompts)
    reasons = (
        prompts.filter(pl.col("excluded_reason").is_not_null())
        .group_by("excluded_reason")
        .len()
        .sort("len", descending=True)
    )
    info = _stage(run, "embed")
    parts = [
        metrics_html(
            {
                "prompts": prompts.height,
                "active": active.height,
                "excluded": prompts.height - active.height,
                "Vendi score": info.get("vendi_score"),
                "cluster entropy": info.get("cluster_entropy"),
                "cluster coverage": info.get("cluster_coverage"),
            }
        )
    ]
    if reasons.height:
        parts.append(table_html(reasons.rename({"excluded_reason": "excluded because", "len": "prompts"})))
    if prompts["cluster"].null_count() < prompts.height:
        sizes = (
            prompts.filter(pl.col("cluster").is_not_null())
            .group_by("cluster")
            .agg(
                pl.len().alias("all"),
                (pl.col("duplicate_of").is_null() & pl.col("excluded_reason").is_null()).sum().alias("active"),
            )
            .sort("cluster")
        )
        covered = set()
        if run.has("pairs"):
            covered = set(
                run.read("pairs")
                .join(prompts.select("prompt_id", "cluster"), on="prompt_id")["cluster"]
                .drop_nulls()
                .to_list()
            )
        fig, ax = figure(width=7)
        x = sizes["cluster"].to_list()
        ax.bar(x, sizes["all"].to_list(), color="#cccccc", label="all prompts")
        ax.bar(
            x,
            sizes["active"].to_list(),
            color=[COLORS[0] if c in covered or not covered else COLORS[3] for c in x],
            label="active",
        )
        ax.set_xlabel("topic cluster")
        ax.set_ylabel("prompts")
        ax.set_title("Cluster sizes" + (" (red: no pair yet)" if covered else ""))
        legend(ax)
        parts.append(plot_html(fig, "cluster sizes"))
        if covered:
            parts.append(
                f"<p>Pairs cover {len(covered)} of {len(x)} clusters ({len(covered) / max(len(x), 1):.0%}).</p>"
            )
    return section("Prompts, dedup and diversity", *parts)


def candidates_section(run: Run) -> str | None:
    if not run.has("candidates"):
        return None
    cands = run.read("candidates")
    by_model = (
        cands.group_by("model")
        .agg(
            pl.len().alias("candidates"),
            pl.col("error").is_not_null().sum().alias("failed"),
            pl.col("completion_tokens").mean().alias("mean_tokens"),
            pl.col("latency_s").mean().alias("mean_latency_s"),
        )
        .sort("model")
    )
    fig, ax = figure()
    for k, model in enumerate(by_model["model"].to_list()):
        lengths = (
            cands.filter((pl.col("model") == model) & pl.col("text").is_not_null())["text"].str.len_chars().to_list()
        )
        if lengths:
            ax.hist(lengths, bins=30, alpha=0.6, label=model, color=COLORS[k % len(COLORS)])
    ax.set_xlabel("characters")
    ax.set_ylabel("candidates")
    ax.set_title("Candidate length by generator")
    legend(ax)
    return section("Candidates", table_html(by_model), plot_html(fig, "candidate lengths"))


def scores_section(run: Run) -> str | None:
    if not run.has("judgments") or not run.has("candidates"):
        return None
    j = run.read("judgments").join(
        run.read("candidates").select("candidate_id", "model", "text"), on="candidate_id", how="left"
    )
    ok = j.filter(pl.col("overall").is_not_null())
    parts = [
        metrics_html(
            {
                "judgments": j.height,
                "scored": ok.height,
                "failed": j.height - ok.height,
                "mean overall": series_mean(ok["overall"]) if ok.height else None,
            }
        )
    ]
    if ok.height:
        long = ok.select("model", "judge", "aspects").explode("aspects").unnest("aspects")
        aspects = long["name"].unique(maintain_order=True).to_list()
        models = sorted(ok["model"].drop_nulls().unique().to_list())
        fig, axes = figure(ncols=len(aspects) + 1, width=3.2, height=3.0)
        axes = axes if isinstance(axes, list) else [axes]
        for ax, name in zip(axes, aspects + ["overall"], strict=True):
            for k, model in enumerate(models):
                vals = (
                    (
                        long.filter((pl.col("name") == name) & (pl.col("model") == model))["score"]
                        if name != "overall"
                        else ok.filter(pl.col("model") == model)["overall"]
                    )
                    .drop_nulls()
                    .to_list()
                )
                if vals:
                    ax.hist(vals, bins=10, alpha=0.6, label=model, color=COLORS[k % len(COLORS)])
            ax.set_title(name)
        legend(axes[0], fontsize=7)
        parts.append("<h3>Score distributions per aspect and generator</h3>" + plot_html(fig, "score distributions"))
        fig, ax = figure()
        for k, model in enumerate(models):
            sub = ok.filter(pl.col("model") == model)
            ax.scatter(
                sub["text"].str.len_chars().to_list(),
                sub["overall"].to_list(),
                s=10,
                alpha=0.6,
                label=model,
                color=COLORS[k % len(COLORS)],
            )
        ax.set_xlabel("candidate length (characters)")
        ax.set_ylabel("overall score")
        ax.set_title("Length vs score")
        legend(ax, fontsize=7)
        corr = (
            ok.select(pl.corr(pl.col("text").str.len_chars(), pl.col("overall"), method="spearman")).item()
            if ok.height > 2
            else None
        )
        note = ""
        if corr is not None and not math.isnan(corr):
            note = (
                f"<p>Spearman correlation of length and score: {corr:.3f} "
                "(strongly positive hints at a length-biased judge).</p>"
            )
        parts.append(plot_html(fig, "length vs score") + note)
    agreement = {k: v for k, v in _stage(run, "judge").items() if k.startswith("agreement_")}
    if agreement:
        parts.append(
            "<h3>Judge ensemble agreement</h3>"
            + table_html([{"pair of judges": k, "value": v} for k, v in agreement.items()])
        )
    if run.has("candidate_scores"):
        cs = run.read("candidate_scores")
        fig, ax = figure()
        ax.hist(cs["relevance"].drop_nulls().to_list(), bins=30, color=COLORS[2])
        ax.set_xlabel("cosine(prompt, candidate)")
        ax.set_title("Relevance (embedding)")
        parts.append(
            "<h3>Embedding scores</h3>"
            + metrics_html({"near-identical candidates": cs["near_identical_to"].is_not_null().sum()})
            + plot_html(fig, "relevance")
        )
    return section("Judge scores", *parts)


def pairs_section(run: Run) -> str | None:
    if not run.has("pairs"):
        return None
    pairs = run.read("pairs")
    parts = [
        metrics_html(
            {
                "pairs": pairs.height,
                "prompts with a pair": pairs["prompt_id"].n_unique(),
                "human": int((pairs["route"] == "human").sum()),
                "auto": int((pairs["route"] == "auto").sum()),
                "dropped": int((pairs["route"] == "dropped").sum()) or None,
            }
        )
    ]  # shown only when some were
    if pairs.height:
        fig, axes = figure(ncols=2, width=4.5)
        axes[0].hist(pairs["margin"].drop_nulls().to_list(), bins=20, color=COLORS[0])  # a verified pair may have none
        threshold = (run.manifest().get("config") or {}).get("route", {}) or {}
        if threshold.get("margin_threshold") is not None:
            axes[0].axvline(threshold["margin_threshold"], color=COLORS[3], linestyle="--", label="route threshold")
            legend(axes[0], fontsize=7)
        axes[0].set_xlabel("judge margin (chosen - rejected)")
        axes[0].set_title("Margins")
        sims = pairs["similarity"].drop_nulls().to_list()
        if sims:
            axes[1].hist(sims, bins=20, color=COLORS[4])
        axes[1].set_xlabel("cosine(chosen, rejected)")
        axes[1].set_title("Pair similarity" if sims else "Pair similarity (no embeddings)")
        parts.append(plot_html(fig, "margins"))
    if pairs["route"].null_count() < pairs.height:
        reasons = (
            pairs.select(pl.col("route_reason").str.replace(r"^over_budget:.*", "over_budget").str.split(","))
            .explode("route_reason")["route_reason"]
            .value_counts(sort=True)
        )
        fig, ax = figure()
        ax.barh(reasons["route_reason"].to_list()[::-1], reasons["count"].to_list()[::-1], color=COLORS[1])
        ax.set_xlabel("pairs")
        ax.set_title("Route reasons")
        parts.append("<h3>Routing</h3>" + plot_html(fig, "route reasons"))
    return section("Pairs and routing", *parts)


def consistency_section(run: Run) -> str | None:
    if not run.has("pair_judgments"):
        return None
    pj = run.read("pair_judgments")
    if pj.is_empty():
        return None
    info = _stage(run, "route")
    parts = [
        metrics_html(
            {
                k: info.get(k)
                for k in (
                    "pairwise_consistency",
                    "pairwise_agrees_with_scores",
                    "pairwise_judges_agree",
                    "pairwise_failed",
                )
            }
        )
    ]
    matrix = (
        pj.with_columns(pl.col("verdict_ab").fill_null("failed"), pl.col("verdict_ba").fill_null("failed"))
        .group_by("judge", "verdict_ab", "verdict_ba")
        .len()
        .sort("judge", "verdict_ab", "verdict_ba")
        .rename({"verdict_ab": "chosen shown first", "verdict_ba": "rejected shown first", "len": "pairs"})
    )
    parts.append(
        "<p>Each pair is judged twice with the responses swapped; "
        "a consistent judge names the same winner both times.</p>"
    )
    parts.append(table_html(matrix))
    conf = pj["confidence"].drop_nulls().to_list()
    if conf:
        fig, ax = figure()
        ax.hist(conf, bins=10, range=(0, 1), color=COLORS[5])
        ax.set_xlabel("pairwise confidence")
        ax.set_title("Pairwise judge confidence")
        parts.append(plot_html(fig, "pairwise confidence"))
    return section("Judge consistency", *parts)


def failures_section(run: Run) -> str | None:
    parts = []
    if run.has("candidates"):
        failed = run.read("candidates").filter(pl.col("error").is_not_null())
        if failed.height:
            parts.append(
                "<h3>Generation</h3>" + table_html(failed.group_by("model", "error").len().sort("len", descending=True))
            )
    if run.has("judgments"):
        failed = run.read("judgments").filter(pl.col("overall").is_null())
        if failed.height:
            kinds = (
                failed.with_columns(pl.col("error").str.extract(r"^([^:]+)").alias("kind"))
                .group_by("judge", "kind")
                .len()
                .sort("len", descending=True)
            )
            sample = failed.select("judge", "error", pl.col("raw").str.slice(0, 200)).head(10)
            parts.append(
                "<h3>Judge (recorded with a null score)</h3>"
                + table_html(kinds)
                + "<p>Examples:</p>"
                + table_html(sample)
            )
    if run.has("pair_judgments"):
        failed = run.read("pair_judgments").filter(pl.col("error").is_not_null())
        if failed.height:
            parts.append(
                "<h3>Pairwise judge</h3>"
                + table_html(failed.select("judge", pl.col("error").str.slice(0, 200)).head(10))
            )
    if run.has("bad_rows"):
        bad = run.read("bad_rows")
        if bad.height:
            parts.append("<h3>Bad input rows</h3>" + table_html(bad))
    return section("Failures", *parts) if parts else section("Failures", "<p>No failures recorded.</p>")


def calibration_section(run: Run) -> str | None:
    """How good the judges are on human-labeled gold, and what routing made of it."""
    if not run.has("calibration"):
        return None
    table = run.read("calibration")
    routing = _stage(run, "route").get("routing") or {}
    parts = [
        metrics_html(
            {
                "gold pairs": _stage(run, "calibrate").get("gold_pairs"),
                "routing signal": routing.get("signal"),
                "target accuracy": routing.get("target_accuracy"),
                "threshold": routing.get("threshold"),
                "predicted accuracy of auto pairs": routing.get("auto_predicted_accuracy"),
                "human share": routing.get("human_share"),
            }
        )
    ]
    if routing.get("auto_predicted_accuracy") is not None:
        parts.append(
            f"<p>Auto-labeled pairs are predicted right {routing['auto_predicted_accuracy']:.1%} of the time "
            f"({routing.get('auto_level', 0.95):.0%} interval {routing['auto_low']:.1%} to {routing['auto_high']:.1%}, "
            "from resampling the gold pairs), "
            "assuming the run's pairs are like the gold ones.</p>"
        )
    if routing.get("target_reached_on_gold") is False:
        parts.append(
            f"<p><strong>No threshold reaches the target of {routing['target_accuracy']:.0%} on gold</strong> at the "
            "lower bound of its interval: every pair goes to people, within the budget.</p>"
        )
    judges = table.filter(pl.col("method") != "signal")
    if judges.height:
        labels = [f"{r['judge']} {r['method']} ({r['source']})" for r in judges.iter_rows(named=True)]
        fig, (left, right) = figure(ncols=2, width=5.5, height=max(2.5, 0.35 * judges.height + 1))
        acc = judges["accuracy"].fill_null(0).to_list()
        err = [
            [a - (lo or a) for a, lo in zip(acc, judges["accuracy_low"].to_list(), strict=True)],
            [(hi or a) - a for a, hi in zip(acc, judges["accuracy_high"].to_list(), strict=True)],
        ]
        left.barh(labels, acc, xerr=err, color=COLORS[0])
        left.axvline(0.5, color="grey", ls="--", lw=1)
        left.set_xlim(0, 1)
        left.invert_yaxis()
        left.set_title("accuracy on gold (95% interval; dashed: chance)")
        pos = judges["position_a"].to_list()
        right.barh(labels, [p if p is not None else 0 for p in pos], color=COLORS[1])
        right.axvline(0.5, color="grey", ls="--", lw=1)
        right.set_xlim(0, 1)
        right.invert_yaxis()
        right.set_yticks([])
        right.set_title("share of verdicts naming A (0.5: no position bias)")
        parts.append(plot_html(fig, "judge accuracy on gold"))
    signals = table.filter((pl.col("method") == "signal") & (pl.col("source") == "all"))
    if signals.height:
        fig, ax = figure(width=6.5)
        # strict=False: a colour per signal, from a palette longer than the list of signals
        for color, r in zip(COLORS, signals.iter_rows(named=True), strict=False):
            curve = r["curve"] or []
            ax.plot(
                [p["coverage"] for p in curve],
                [p["accuracy"] for p in curve],
                color=color,
                label=f"{r['signal']} (accuracy)",
            )
            ax.fill_between(
                [p["coverage"] for p in curve],
                [p["low"] for p in curve],
                [p["high"] for p in curve],
                color=color,
                alpha=0.15,
            )
        if routing.get("target_accuracy"):
            ax.axhline(routing["target_accuracy"], color="black", ls=":", lw=1, label="target")
        if routing.get("gold_coverage"):
            ax.axvline(routing["gold_coverage"], color="grey", ls="--", lw=1, label="chosen threshold")
        ax.set_xlabel("share of gold pairs labeled automatically (most confident first)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title("accuracy-coverage on gold, by routing signal (band: 95% interval)")
        legend(ax, fontsize=8)
        parts.append(plot_html(fig, "accuracy-coverage curves"))
    cols = [
        "judge",
        "method",
        "signal",
        "source",
        "n",
        "failures",
        "accuracy",
        "accuracy_low",
        "accuracy_high",
        "accuracy_no_ties",
        "tie_rate",
        "consistency",
        "position_a",
        "accuracy_chosen_shorter",
        "accuracy_chosen_longer",
    ]
    parts.append(
        "<p>Accuracy counts a tie as half; the interval is Wilson's 95%. Consistency: the same winner with the "
        "responses swapped. Length bias shows as a gap between accuracy where people preferred the shorter response "
        "and the longer. pairwise_prob compares the chosen response's probability across both orders, which cancels "
        "a constant position preference.</p>"
    )
    parts.append(table_html(table.select(cols), max_rows=200))
    return section("Calibration on gold", *parts, anchor="calibration")


SECTIONS = [
    overview_section,
    prompts_section,
    candidates_section,
    scores_section,
    pairs_section,
    calibration_section,
    consistency_section,
    failures_section,
]

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\n"
    "h1{margin-bottom:0}section{margin:2em 0;border-top:1px solid #ddd}img{max-width:100%}\n"
    "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
    "td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\n"
    ".metrics{display:flex;flex-wrap:wrap;gap:1.5em;margin:1em 0}"
    ".metric .value{font-size:1.6em;font-weight:600}.metric .label{color:#666;font-size:0.85em}\n"
    "nav a{margin-right:1em}"
)


def all_sections() -> list:
    return SECTIONS + registry.report_sections()


def render(run: Run) -> str:
    parts = []
    for fn in all_sections():
        try:
            part = fn(run)
        except Exception as e:  # one broken section must not cost the whole report
            part = section(
                fn.__name__,
                f"<p><strong>this section failed:</strong> {html.escape(type(e).__name__)}: {html.escape(str(e))}</p>",
            )
            console.print(f"[yellow]report section {fn.__name__} failed: {e}[/yellow]")
        if part:
            parts.append(part)
    title = f"prefab report: {run.path.name}"
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    config = run.manifest().get("config")
    cfg_html = (
        f"<details><summary>config</summary><pre>{html.escape(json.dumps(config, indent=2))}</pre></details>"
        if config
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(str(run.path))} &middot; {stamp}</p>"
        f"{cfg_html}{''.join(parts)}</body></html>"
    )


def write_report(run: Run) -> tuple[str, int]:
    text = render(run)
    path = run.path / "report.html"
    atomic_write_text(path, text)
    return str(path), text.count("<section")


def step(config: Config, run: Run, **_) -> dict:
    path, n = write_report(run)
    console.print(f"report: {path}")
    return {"sections": n}


STAGE = Stage(name="report", order=120, step=step)
