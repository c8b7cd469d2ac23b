"""The run report's section on human labels: counts, resolution, agreement, and where humans and judge part.

Listed in pipeline/report.py's EXTRA_SECTION_MODULES; absent tables make the section disappear.
"""

import polars as pl

from labeling.agreement import CATEGORIES, agreement
from pipeline.report import COLORS, figure, metrics_html, plot_html, section, table_html


def labels_section(run) -> str | None:
    if not run.has("labels"):
        return None
    labels = run.read("labels")
    resolved = run.read_or_empty("resolved")
    stats = run.stage_info("pull").get("agreement") or agreement(labels, resolved, run.read_or_empty("pairs"),
                                                                  run.read_or_empty("pair_judgments"))
    jh = stats["judge_human"]
    submitted = labels.filter((pl.col("status") == "submitted") & pl.col("label").is_not_null())
    numbers = metrics_html({
        "labels": stats["labels"], "annotators": stats["annotators"], "pairs labeled": stats["pairs"],
        "Krippendorff's α": stats["krippendorff_alpha"], "Fleiss' κ": stats["fleiss_kappa"],
        "mean Cohen's κ": stats["cohen_kappa_mean"], "raw agreement": stats["raw_agreement"],
        "judge = human": jh["with_ties"]["agreement"], "judge = human (no ties)": jh["without_ties"]["agreement"],
    })
    rows = [
        {"measure": "Krippendorff's alpha (nominal, all pairs with 2+ labels)", "value": stats["krippendorff_alpha"], "n": stats["pairs_multi"]},
        {"measure": "Fleiss' kappa (pairs with the commonest label count)", "value": stats["fleiss_kappa"], "n": stats["fleiss_items"]},
        {"measure": "raw pairwise agreement", "value": stats["raw_agreement"], "n": stats["pairs_multi"]},
        {"measure": "judge = human, ties counted", "value": jh["with_ties"]["agreement"], "n": jh["with_ties"]["n"]},
        {"measure": "judge vs human Cohen's kappa, ties counted", "value": jh["with_ties"]["kappa"], "n": jh["with_ties"]["n"]},
        {"measure": "judge = human, without ties", "value": jh["without_ties"]["agreement"], "n": jh["without_ties"]["n"]},
        {"measure": "humans said both responses are bad", "value": jh["both_bad"], "n": None},
    ]
    rows += [{"measure": f"Cohen's kappa {pair}", "value": v["kappa"], "n": v["n"]} for pair, v in stats["cohen_kappa"].items()]
    status = resolved.group_by("status").len().sort("status").rename({"len": "pairs"}) if not resolved.is_empty() else None
    missing = labels.filter(pl.col("missing_since").is_not_null()).height
    note = f"<p>{missing} label(s) no longer on the server are kept as last seen (missing_since).</p>" if missing else ""

    img = ""
    if submitted.height:
        fig, (left, right) = figure(ncols=2, width=5.0)
        annotators = sorted(submitted["annotator"].unique().to_list())
        bottom = [0] * len(annotators)
        for color, cat in zip(COLORS, CATEGORIES):
            counts = [submitted.filter((pl.col("annotator") == a) & (pl.col("label") == cat)).height for a in annotators]
            left.bar(annotators, counts, bottom=bottom, label=cat, color=color)
            bottom = [b + c for b, c in zip(bottom, counts)]
        left.set_title("labels per annotator")
        left.legend(fontsize=8)
        left.tick_params(axis="x", rotation=30)
        names = ["Krippendorff α", "Fleiss κ", "mean Cohen κ", "raw agreement", "judge=human", "judge=human (no ties)"]
        values = [stats["krippendorff_alpha"], stats["fleiss_kappa"], stats["cohen_kappa_mean"], stats["raw_agreement"],
                  jh["with_ties"]["agreement"], jh["without_ties"]["agreement"]]
        right.barh(names, [v or 0 for v in values], color=[COLORS[0]] * 4 + [COLORS[1]] * 2)
        for y, v in enumerate(values):
            right.text(max(v or 0, 0) + 0.01, y, "n/a" if v is None else f"{v:.2f}", va="center", fontsize=8)
        right.set_xlim(min([0.0] + [v for v in values if v is not None]) - 0.05, 1.15)
        right.invert_yaxis()
        right.axvline(0, color="grey", lw=0.5)
        right.set_title("agreement")
        img = plot_html(fig, "labels and agreement")
    return section("Human labels and agreement", numbers, img, table_html(rows),
                   table_html(status) if status is not None else "", note, anchor="labels")


sections = [labels_section]
