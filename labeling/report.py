"""The run report's section on human labels: counts, resolution, agreement, and where humans and judge part.

Registered as `sections` under the `prefab.report` entry point (pyproject.toml); absent tables make the section
disappear.
"""

import polars as pl

from labeling.agreement import CATEGORIES, agreement
from labeling.settings import LabelingConfig
from pipeline.stages.report import COLORS, figure, metrics_html, plot_html, section, table_html


def labels_section(run) -> str | None:
    if not run.has("labels"):
        return None
    labels = run.read("labels")
    resolved = run.read_or_empty("resolved")
    stats = run.stage_info("pull").get("agreement") or agreement(
        labels, resolved, run.read_or_empty("pairs"), run.read_or_empty("pair_judgments")
    )
    jh = stats["judge_human"]
    submitted = labels.filter((pl.col("status") == "submitted") & pl.col("label").is_not_null())
    numbers = metrics_html(
        {
            "labels": stats["labels"],
            "annotators": stats["annotators"],
            "pairs labeled": stats["pairs"],
            "Krippendorff's α": stats["krippendorff_alpha"],
            "Fleiss' κ": stats["fleiss_kappa"],
            "mean Cohen's κ": stats["cohen_kappa_mean"],
            "raw agreement": stats["raw_agreement"],
            "judge = human": jh["with_ties"]["agreement"],
            "judge = human (no ties)": jh["without_ties"]["agreement"],
        }
    )
    rows = [
        {
            "measure": "Krippendorff's alpha (nominal, all pairs with 2+ labels)",
            "value": stats["krippendorff_alpha"],
            "n": stats["pairs_multi"],
        },
        {
            "measure": "Fleiss' kappa (pairs with the commonest label count)",
            "value": stats["fleiss_kappa"],
            "n": stats["fleiss_items"],
        },
        {"measure": "raw pairwise agreement", "value": stats["raw_agreement"], "n": stats["pairs_multi"]},
        {"measure": "judge = human, ties counted", "value": jh["with_ties"]["agreement"], "n": jh["with_ties"]["n"]},
        {
            "measure": "judge vs human Cohen's kappa, ties counted",
            "value": jh["with_ties"]["kappa"],
            "n": jh["with_ties"]["n"],
        },
        {
            "measure": "judge = human, without ties",
            "value": jh["without_ties"]["agreement"],
            "n": jh["without_ties"]["n"],
        },
        {"measure": "humans said both responses are bad", "value": jh["both_bad"], "n": None},
    ]
    rows += [
        {"measure": f"Cohen's kappa {pair}", "value": v["kappa"], "n": v["n"]}
        for pair, v in stats["cohen_kappa"].items()
    ]
    status = (
        resolved.group_by("status").len().sort("status").rename({"len": "pairs"}) if not resolved.is_empty() else None
    )
    missing = labels.filter(pl.col("missing_since").is_not_null()).height
    note = (
        f"<p>{missing} label(s) no longer on the server are kept as last seen (missing_since).</p>" if missing else ""
    )

    img = ""
    if submitted.height:
        fig, (left, right) = figure(ncols=2, width=5.0)
        annotators = sorted(submitted["annotator"].unique().to_list())
        bottom = [0] * len(annotators)
        # COLORS is the report's whole palette (10), longer than the 4 categories: each takes the next colour
        for color, cat in zip(COLORS, CATEGORIES, strict=False):
            counts = [
                submitted.filter((pl.col("annotator") == a) & (pl.col("label") == cat)).height for a in annotators
            ]
            left.bar(annotators, counts, bottom=bottom, label=cat, color=color)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        left.set_title("labels per annotator")
        left.legend(fontsize=8)
        left.tick_params(axis="x", rotation=30)
        names = ["Krippendorff α", "Fleiss κ", "mean Cohen κ", "raw agreement", "judge=human", "judge=human (no ties)"]
        values = [
            stats["krippendorff_alpha"],
            stats["fleiss_kappa"],
            stats["cohen_kappa_mean"],
            stats["raw_agreement"],
            jh["with_ties"]["agreement"],
            jh["without_ties"]["agreement"],
        ]
        right.barh(names, [v or 0 for v in values], color=[COLORS[0]] * 4 + [COLORS[1]] * 2)
        for y, v in enumerate(values):
            right.text(max(v or 0, 0) + 0.01, y, "n/a" if v is None else f"{v:.2f}", va="center", fontsize=8)
        right.set_xlim(min([0.0] + [v for v in values if v is not None]) - 0.05, 1.15)
        right.invert_yaxis()
        right.axvline(0, color="grey", lw=0.5)
        right.set_title("agreement")
        img = plot_html(fig, "labels and agreement")
    return section(
        "Human labels and agreement",
        numbers,
        img,
        table_html(rows),
        table_html(status) if status is not None else "",
        note,
        anchor="labels",
    )


def annotators_section(run) -> str | None:
    """Each annotator's accuracy on the gold pairs mixed, unmarked, into their queue; who is flagged and why."""
    push = run.stage_info("push")
    if not run.has("annotators") and not push.get("gold_pushed"):
        return None
    labeling = LabelingConfig.model_validate(
        (run.manifest().get("config") or {}).get("labeling") or {}
    )  # its defaults, not copies
    threshold = labeling.min_annotator_accuracy
    parts = [
        metrics_html(
            {
                "gold pairs in the queue": push.get("gold_pushed"),
                "aggregation": run.stage_info("pull").get("aggregation"),
                "flag below (accuracy on gold)": threshold,
            }
        )
    ]
    quality = run.read("annotators") if run.has("annotators") else None
    if quality is None or quality.is_empty():
        parts.append(
            "<p>No answers yet. Once annotators label, each one's accuracy on the gold pairs, agreement with the "
            "others and speed show here after <code>prefab pull</code>.</p>"
        )
        return section("Annotator quality", *parts, anchor="annotators")
    measured = quality.filter(pl.col("gold_answers") > 0)
    if measured.height:
        fig, ax = figure(width=6.0, height=max(2.2, 0.4 * measured.height + 1))
        acc = measured["gold_accuracy"].to_list()
        err = [
            [a - lo for a, lo in zip(acc, measured["gold_low"].to_list(), strict=True)],
            [hi - a for a, hi in zip(acc, measured["gold_high"].to_list(), strict=True)],
        ]
        colors = [COLORS[3] if f else COLORS[2] for f in measured["flagged"].to_list()]
        ax.barh(measured["annotator"].to_list(), acc, xerr=err, color=colors)
        ax.axvline(threshold, color="black", ls=":", lw=1)
        ax.set_xlim(0, 1.05)
        ax.invert_yaxis()
        ax.set_title("accuracy on gold (95% interval); red: flagged")
        parts.append(plot_html(fig, "annotator accuracy on gold"))
    parts.append(stated_vs_measured(run, quality))
    flagged = quality.filter(pl.col("flagged"))["annotator"].to_list()
    if flagged:
        action = (
            "their labels are left out of the resolution"
            if labeling.flagged == "exclude"
            else "their labels are kept, weighed by their estimated reliability"
        )
        parts.append(f"<p><strong>Flagged:</strong> {', '.join(flagged)}: {action}.</p>")
    parts.append(table_html(quality))
    return section("Annotator quality", *parts, anchor="annotators")


def stated_vs_measured(run, quality: pl.DataFrame) -> str:
    """Each annotator's accuracy as the aggregation states it (90% interval; assumed where it rests on the prior) beside
    what their gold answers measure (95% interval), and the stated accuracy of the human labels as a whole."""
    pull = run.stage_info("pull")
    text = ""
    if pull.get("human_accuracy") is not None:
        text = (
            f"<p>Human labels: <strong>{pull['human_accuracy']:.1%}</strong> right as stated, 90% interval "
            f"{pull['human_low']:.1%} to {pull['human_high']:.1%}, <strong>{pull['human_basis']}</strong> "
            "(measured: every annotator's accuracy rests on enough gold answers; assumed: on the prior "
            "<code>labeling.prior_accuracy</code>, moved by agreement).</p>"
        )
    stated = (
        quality.filter(pl.col("reliability_low").is_not_null())
        if "reliability_low" in quality.columns
        else quality.clear()
    )
    if stated.is_empty():
        return text
    names = stated["annotator"].to_list()
    fig, ax = figure(width=6.0, height=max(2.2, 0.5 * len(names) + 1))
    y = list(range(len(names)))
    est = stated["reliability"].to_list()
    ax.errorbar(
        est,
        [v - 0.15 for v in y],
        xerr=[
            [e - lo for e, lo in zip(est, stated["reliability_low"].to_list(), strict=True)],
            [hi - e for e, hi in zip(est, stated["reliability_high"].to_list(), strict=True)],
        ],
        fmt="o",
        color=COLORS[0],
        label="stated (90%)",
    )
    gold = stated.filter(pl.col("gold_answers") > 0)
    if gold.height:
        rows = [names.index(a) + 0.15 for a in gold["annotator"].to_list()]
        acc = gold["gold_accuracy"].to_list()
        ax.errorbar(
            acc,
            rows,
            xerr=[
                [a - lo for a, lo in zip(acc, gold["gold_low"].to_list(), strict=True)],
                [hi - a for a, hi in zip(acc, gold["gold_high"].to_list(), strict=True)],
            ],
            fmt="s",
            color=COLORS[2],
            label="measured on gold (95%)",
        )
    ax.set_yticks(y, [f"{n} ({b})" for n, b in zip(names, stated["basis"].to_list(), strict=True)])
    ax.set_xlim(0, 1.02)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("annotator accuracy: stated vs measured on gold")
    return text + plot_html(fig, "annotator accuracy stated vs measured")


sections = [labels_section, annotators_section]
