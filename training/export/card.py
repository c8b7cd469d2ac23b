"""The dataset card (README.md beside the files) and the counts the manifest keeps: what made the data, what is in
it, and how often its labels are right."""

import polars as pl

from labeling.settings import LabelingConfig
from pipeline.core.config import EMBEDDED_LLM
from pipeline.core.store import Run, content_id
from pipeline.stages.pair import is_verified
from training.export.rows import FILES
from training.formats import kto_weights
from training.settings import ExportConfig


def export_counts(df: pl.DataFrame, dropped: dict, files: dict, n_pairs: int) -> dict:
    per = lambda col: {str(k): v for k, v in df.group_by(col).len().sort(col).iter_rows()}  # noqa: E731
    return {
        "pairs": n_pairs,
        "exported": df.height,
        "train": df.filter(pl.col("split") == "train").height,
        "test": df.filter(pl.col("split") == "test").height,
        "prompts": df["prompt_id"].n_unique(),
        "by_source": per("source"),
        "by_route": per("route"),
        "human_swapped": int(df["swapped"].sum()),
        "dropped": dropped,
        "files": {name: len(rows) for name, (rows, _) in files.items()},
    }


def _stats(s: pl.Series) -> str:
    return f"{s.min()} / {int(s.median())} / {s.mean():.1f} / {s.max()}"


def dataset_card(
    run: Run,
    df: pl.DataFrame,
    counts: dict,
    config: ExportConfig,
    files: dict,
    config_hash: str | None,
    resolution=None,
    labeling: LabelingConfig | None = None,
) -> str:
    """README.md beside the files: what made the data and what is in it (Hugging Face card front matter)."""
    manifest = run.manifest()
    candidates = run.read_or_empty("candidates")
    judges = sorted(
        set(run.read_or_empty("judgments")["judge"].to_list())
        | set(run.read_or_empty("pair_judgments")["judge"].to_list())
    )
    generators = sorted(set(candidates["model"].to_list()))
    config_hash = config_hash or content_id("export", config.model_dump(mode="json"))
    front = ["---", "configs:"]
    for fmt in config.formats:
        for stem in FILES[fmt]:
            splits = [s for s in ("train", "test") if f"{stem}_{s}.jsonl" in files]
            if splits:
                front += [f"- config_name: {stem}", "  data_files:"]
                front += [f"  - split: {s}\n    path: {stem}_{s}.jsonl" for s in splits]
    front += [
        "tags:",
        "- dpo",
        *[f"- {f}" for f in ("kto", "grpo") if f in config.formats],
        "- preference",
        "- prefab",
        "---",
        "",
    ]
    lines = [
        f"# Preference data from `{run.path.name}`",
        "",
        "Made by prefab from prompts, model responses, an LLM judge and human labels.",
        "",
        "## How it was made",
        "",
        f"- generators: {', '.join(f'`{g}`' for g in generators) or 'n/a'}",
        f"- judge(s): {', '.join(f'`{j}`' for j in judges) or 'n/a'}",
        f"- export config hash: `{config_hash}`; sources: {', '.join(config.sources)}; min judge margin (auto pairs): "
        f"{config.min_margin}; ties: {config.ties}; both bad: {config.both_bad}; max tokens: "
        f"{config.max_tokens or 'none'} "
        + (
            f"(tokenizer `{config.tokenizer or EMBEDDED_LLM}`)"
            if "prompt_tokens" in df.columns
            else "(tokens not counted)"
        ),
        f"- split by prompt, seed {config.seed}: {counts['train']} train / {counts['test']} test pairs; "
        "no prompt is in both",
        "- human labels override the judge: where annotators preferred the judge's rejected response the sides are "
        f"swapped ({counts['human_swapped']} pair(s))",
        "",
        "## Files",
        "",
        "| file | rows | format |",
        "|---|---|---|",
    ]
    for name, (rows, model) in files.items():
        lines.append(f"| `{name}` | {len(rows)} | {model.__doc__.splitlines()[0]} |")
    lines += ["", "## Counts", "", "| | pairs |", "|---|---|"]
    lines += [f"| source: {k} | {v} |" for k, v in counts["by_source"].items()]
    lines += [f"| route: {k} | {v} |" for k, v in counts["by_route"].items()]
    lines += [f"| dropped: {k} | {v} |" for k, v in counts["dropped"].items()]
    lines += kto_lines(counts.get("kto")) + grpo_lines(counts.get("grpo"))
    lines += [
        "",
        "## Estimated label accuracy",
        "",
        "Stated: how often the exported labels are right, with a 90% interval. *Measured* rests on human-labeled gold "
        "pairs; *assumed* rests on a stated prior that gold answers have not (yet) replaced.",
        "",
    ]
    lines += accuracy_lines(run, df, resolution, labeling or LabelingConfig())
    agreement = manifest.get("stages", {}).get("pull", {}).get("agreement") or {}
    agree = [
        f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
        for k, v in agreement.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    for kind, v in (agreement.get("judge_human") or {}).items():
        if isinstance(v, dict) and v.get("agreement") is not None:
            agree.append(f"- judge = human ({kind.replace('_', ' ')}): {v['agreement']:.3f} over {v.get('n')} pairs")
    if df["agreement"].drop_nulls().len():
        agree.append(
            "- mean share of annotators agreeing with the majority (exported human pairs): "
            f"{df['agreement'].drop_nulls().mean():.3f}"
        )
    lines += ["", "## Agreement", ""] + (agree or ["no human labels in this export"])
    unit = "tokens" if "prompt_tokens" in df.columns else "chars"
    chosen_longer = (df[f"chosen_{unit}"] > df[f"rejected_{unit}"]).mean()
    lines += [
        "",
        f"## Lengths ({'tokens' if unit == 'tokens' else 'characters; tokens with --tokenizer'}: "
        "min / median / mean / max)",
        "",
        f"- prompt: {_stats(df[f'prompt_{unit}'])}",
        f"- chosen: {_stats(df[f'chosen_{unit}'])}",
        f"- rejected: {_stats(df[f'rejected_{unit}'])}",
        f"- chosen longer than rejected: {chosen_longer:.1%} of pairs (far from 50% means a length bias a model can "
        "learn)",
        "",
    ]
    return "\n".join(front + lines)


def kto_lines(kto: dict | None) -> list[str]:
    """The card's KTO section: how unbalanced the unpaired rows are and the weights that make up for it."""
    if not kto:
        return []
    n_d, n_u = kto["train_desirable"], kto["train_undesirable"]
    d_w, u_w = kto_weights(n_d, n_u)
    out = [
        "",
        "## KTO (unpaired)",
        "",
        f"- desirable (chosen, label true): {kto['desirable']} rows ({n_d} train); undesirable (rejected, label "
        f"false): {kto['undesirable']} rows ({n_u} train); one row per candidate, "
        "a text chosen in one pair and rejected in another left out",
        "- TRL's KTOTrainer wants desirable_weight × n_desirable / (undesirable_weight × n_undesirable) within [1, "
        f"4/3] (KTO paper, Eq. 8); here, with weights 1.0, it is {n_d / n_u:.3f}"
        if n_d and n_u
        else "- the train split lacks one of the two labels: KTO needs both desirable and undesirable rows",
    ]
    if (d_w, u_w) != (1.0, 1.0):
        out.append(
            f"- train with `desirable_weight: {d_w}` and `undesirable_weight: {u_w}` (ratio "
            f"{d_w * n_d / (u_w * n_u):.3f}); `prefab train kto` sets them itself unless `balance: false`"
        )
    elif n_d and n_u:
        out.append("- balanced enough: keep both weights at 1.0")
    return out


def grpo_lines(grpo: dict | None) -> list[str]:
    if not grpo:
        return []
    return [
        "",
        "## GRPO prompt set",
        "",
        f"- {grpo['prompts']} prompts ({grpo['train']} train / {grpo['test']} test): the run's prompts with a "
        f"verifier's ground truth, {grpo['with_reference']} with a reference answer (math-verify), "
        f"{grpo['with_tests']} with tests (the code sandbox); a prompt is in the same split as its pairs",
        "- `prefab train grpo` rewards a completion with the same verifier: 1.0 for "
        "a correct final answer, else 0.0; for code, the share of tests passed",
    ]


def accuracy_lines(run: Run, df: pl.DataFrame, resolution=None, labeling: LabelingConfig | None = None) -> list[str]:
    """The dataset card's statement of how often the exported labels are right, per source: how much, with what
    interval, and whether measured on gold or assumed."""
    labeling = labeling or LabelingConfig()
    out = []
    routing = run.stage_info("route").get("routing") or {}
    by_verifier = (pl.col("source") == "auto") & is_verified()
    verified = df.filter(by_verifier)
    if verified.height:
        out.append(
            f"- verified ({verified.height} pairs): assumed right as far as the reference answers are: the chosen "
            "response's final answer matches the prompt's reference answer and the rejected one's does not "
            "(math-verify); not measured on gold"
        )
    for source in ("human", "auto"):
        part = df.filter((pl.col("source") == source) & ~by_verifier)
        if part.is_empty():
            continue
        known = part["label_confidence"].drop_nulls()
        if source == "human" and known.len():
            out.append(human_line(part, known, resolution, labeling))
        elif source == "auto" and known.len() == part.height:
            level = routing.get("auto_level", 0.95)
            interval = (
                f"; {level:.0%} interval for all auto pairs of the run {routing['auto_low']:.1%} to "
                f"{routing['auto_high']:.1%}"
                if routing.get("auto_low") is not None
                else ""
            )
            out.append(
                f"- auto ({part.height} pairs): {known.mean():.1%} right, measured: the judges' confidence calibrated "
                f"on {run.stage_info('calibrate').get('gold_pairs', '?')} human-labeled gold pairs, signal "
                f"`{routing.get('signal', '?')}`{interval}; assumes the run's pairs are like the gold ones"
            )
        else:
            out.append(
                f"- {source} ({part.height} pairs): unknown"
                + (" (no gold calibration: run `prefab calibrate`)" if source == "auto" else " (no label confidence)")
            )
    if run.has("annotators"):
        for r in run.read("annotators").iter_rows(named=True):
            flag = " (flagged)" if r["flagged"] else ""
            measured = (
                f"measured {r['gold_accuracy']:.1%} right on {r['gold_answers']} gold pairs [{r['gold_low']:.2f}, "
                f"{r['gold_high']:.2f}]"
                if r["gold_answers"]
                else "no gold answers yet"
            )
            estimated = (
                f"; estimated {r['reliability']:.1%} [{r['reliability_low']:.2f}, "
                f"{r['reliability_high']:.2f}] ({r['basis']})"
                if r.get("reliability_low") is not None
                else ""
            )
            out.append(f"- annotator {r['annotator']}: {measured}{estimated}{flag}")
    return out or ["- unknown"]


def human_line(part: pl.DataFrame, known: pl.Series, resolution, labeling: LabelingConfig) -> str:
    """The human source's line: the model's stated accuracy and interval, or what the aggregation gives."""
    method = part["method"].drop_nulls()
    method = method[0] if method.len() else None
    n = part.height
    if method == "bayesian" and resolution is not None and resolution.model is not None:
        # the preference as resolved (before export swapped the sides) and the pairs that carry a confidence
        sided = part.filter(pl.col("human_confidence").is_not_null())
        stated = resolution.stated(sided["pair_id"].to_list(), sided["preference"].to_list())
        quality = resolution.annotators
        gold = int(quality["gold_answers"].sum()) if quality.height else 0
        assumed = stated["assumed"]
        basis = (
            (
                f"assumed: annotator accuracy from the prior {resolution.prior.describe()} (labeling.prior_accuracy), "
                f"moved by {gold} gold answer(s) and by agreement; fewer than {labeling.min_gold_answers} gold answers "
                f"for {', '.join(assumed)}"
            )
            if assumed
            else f"measured: every annotator's accuracy rests on gold answers ({gold} in all)"
        )
        return (
            f"- human ({n} pairs): {stated['stated']:.1%} right, 90% interval {stated['low']:.1%} to "
            f"{stated['high']:.1%}; {basis} (one-coin Bayesian model, the judge's calibrated confidence as each pair's "
            "prior)"
        )
    if method == "dawid_skene":
        return (
            f"- human ({n} pairs): {known.mean():.1%} by Dawid-Skene's posterior (crowd-kit), not an honest "
            "probability with few labels, one annotator or no gold answers: no interval"
        )
    return f"- human ({n} pairs): {known.mean():.1%} of annotators behind the majority (agreement, not a probability)"
