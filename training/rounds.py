"""`prefab rounds CONFIG`: iterative, on-policy DPO (`train.rounds: N`).

Round r is a sub-run `<run>/round-r` that runs the config's stages (generate -> judge -> pair -> route ->
export -> train, then eval when `train.evaluate` is on). Round 1 uses the configured generators and base
model; every later round generates with the previous round's trained model (the first generator's
sampling settings, model swapped) and trains on from it, so the preference pairs always come from the
current policy. Labeling stays a separate step: rounds export what is labeled so far plus the automatic
pairs (`export.sources`). Each round keeps its own tables, call cache and model; re-running skips the
stages and rounds that are complete.
"""

from pathlib import Path

from pipeline.core.config import Config
from pipeline.core.errors import ConfigError
from pipeline.core.store import Run
from training.settings import TrainConfig


def round_config(config: Config, r: int, policy: str | None) -> Config:
    """The config of round r: its own run directory; after round 1 the policy generates and is trained on."""
    sub = config.model_copy(deep=True)
    sub.source = config.source
    sub.run = str(Path(config.run) / f"round-{r}")
    sub.train = (config.train or TrainConfig()).model_copy(update={"rounds": 1})
    if sub.stages:
        sub.stages = [s for s in sub.stages if s != "push"]
    elif sub.labeling is not None:
        sub.labeling = None  # pushing to Argilla is a separate, human step
    if policy is not None:
        first = config.generate.generators[0]
        sub.generate.generators = [first.on_backend("transformers", name=f"policy-round-{r}", model=policy)]
        sub.train.overrides = {**sub.train.overrides, "model": policy}
    return sub


def run_rounds(config: Config, *, force: bool = False) -> list[dict]:
    """Run every round in order; returns (and records in the parent manifest) one summary per round."""
    from pipeline.core.progress import console  # start-up: rich.console, rich.progress, rich.table
    from pipeline.core.runner import planned, run_pipeline  # start-up: rich.console, rich.progress, rich.table

    tc = config.train or TrainConfig()
    if config.generate is None or config.train is None:
        raise ConfigError("rounds need `generate:` and `train:` sections", hint="see data/configs/rounds.yaml")
    missing = [s for s in ("generate", "judge", "pair", "export", "train") if s not in planned(config)]
    if missing:
        raise ConfigError(
            f"rounds need the stages {', '.join(missing)} in the config",
            hint="add their sections (or list them in `stages`)",
        )
    parent = Run(config.run)
    parent.path.mkdir(parents=True, exist_ok=True)
    history, policy = [], None
    for r in range(1, tc.rounds + 1):
        sub = round_config(config, r, policy)
        run = Run(sub.run)
        console.rule(f"round {r} of {tc.rounds}" + (f": policy {policy}" if policy else ""))
        run_pipeline(sub, run, force=force)
        train_info = run.stage_info("train")
        trained = train_info.get("model_dir") or str(run.path / "train" / tc.method)
        entry = {
            "round": r,
            "run": str(run.path),
            "generator": policy or ",".join(g.label for g in config.generate.generators),
            "base": train_info.get("base_model"),
            "trained": trained,
            **{
                k: train_info.get(k)
                for k in (
                    "last_loss",
                    "reward_accuracy",
                    "eval_rewards/accuracies",
                    "test_reward_accuracy",
                    "win_rate",
                    "lc_win_rate",
                )
                if train_info.get(k) is not None
            },
            "pairs": run.stage_info("export").get("exported"),
        }
        history.append(entry)
        parent.update_manifest(rounds=history)
        policy = trained
    return history
