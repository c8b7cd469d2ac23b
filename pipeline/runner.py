"""`prefab run`: the configured stages in pipeline order, skipping what is already complete.

Each stage lives in its own module with a `step(config, run, **options) -> dict` that reads earlier
tables, calls the stage's plain function, writes its table and returns counts for the manifest.
"""

import hashlib
import importlib
import json

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.store import Run

# stage name -> (module with step(), config section it needs)
STAGES: dict[str, tuple[str, str]] = {
    "ingest": ("pipeline.ingest", "ingest"),
    "dedup": ("pipeline.dedup", "dedup"),
    "generate": ("pipeline.generate", "generate"),
    "judge": ("pipeline.judge", "judge"),
    "embed": ("pipeline.embed", "embed"),
    "pair": ("pipeline.pair", "pair"),
    "calibrate": ("pipeline.calibrate", "calibrate"),
    "route": ("pipeline.route", "route"),
    "push": ("labeling.push", "labeling"),
    "export": ("training.export", "export"),
    "train": ("training.train", "train"),
    "report": ("pipeline.report", None),
}


def section_hash(config: Config, stage: str) -> str:
    """Hash of the config that a stage (and the stages before it) depends on."""
    names = list(STAGES)
    upto = names[: names.index(stage) + 1]
    data = {s: _dump(getattr(config, STAGES[s][1])) for s in upto if STAGES[s][1]}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _dump(section):
    return section.model_dump(mode="json") if section is not None else None


def planned(config: Config) -> list[str]:
    if config.stages:
        unknown = [s for s in config.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown} in `stages`", hint=f"valid stages: {', '.join(STAGES)}")
        return [s for s in STAGES if s in config.stages]
    return [s for s, (_, section) in STAGES.items() if section is None or getattr(config, section) is not None]


def run_step(stage: str, config: Config, run: Run, **options) -> dict:
    """Run one stage; on success record its counts and the config it ran with in the manifest."""
    module = importlib.import_module(STAGES[stage][0])
    with run.stage(stage) as info:
        counts = module.step(config, run, **options) or {}
        info.update(counts)
        info["config_hash"] = section_hash(config, stage)
    run.update_manifest(config=snapshot(config))
    return counts


def snapshot(config: Config) -> dict:
    """The config as run (secrets are only env-var names, so it is safe to store)."""
    data = config.model_dump(mode="json")
    data["source"] = str(config.source) if config.source else None
    return data


def run_pipeline(config: Config, run: Run, *, start: str | None = None, until: str | None = None, force: bool = False) -> list[str]:
    """Run the planned stages; returns the ones that ran."""
    stages = planned(config)
    for name in (start, until):
        if name and name not in stages:
            raise ConfigError(f"stage {name!r} is not planned by this config", hint=f"planned stages: {', '.join(stages)}")
    if start:
        stages = stages[stages.index(start):]
    if until:
        stages = stages[: stages.index(until) + 1]
    ran: list[str] = []
    for stage in stages:
        info = run.stage_info(stage)
        fresh = info.get("status") == "complete" and info.get("config_hash") == section_hash(config, stage)
        if fresh and not ran and not force and not (start and stage == start):
            from pipeline.progress import console
            console.print(f"[dim]{stage}: complete, skipped[/dim]")
            continue
        run_step(stage, config, run)
        ran.append(stage)
    return ran
