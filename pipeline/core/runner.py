"""`prefab run`: the configured stages in pipeline order, skipping what is already complete.

A stage (pipeline/core/stage.py) is registered by entry point (pipeline/core/registry.py); its `step(config, run,
**options) -> dict` reads earlier tables, calls the stage's plain function, writes its table and returns counts for
the manifest. Stages run by their `order`.
"""

import hashlib
import json

from pipeline.core import registry
from pipeline.core.cache import spending_limit
from pipeline.core.config import Config
from pipeline.core.errors import ConfigError
from pipeline.core.progress import console, stage_lines, third_party_log
from pipeline.core.store import Run


def section_hash(config: Config, stage: str) -> str:
    """Hash of the config that a stage (and the stages before it) depends on, and of their other inputs (a local
    checkpoint's fingerprint) where they have any."""
    stages = registry.stages()
    names = list(stages)
    upto = names[: names.index(stage) + 1]
    data: dict = {s: _dump(config.section(section)) for s in upto if (section := stages[s].section)}
    for s in upto:
        inputs = stages[s].inputs
        if inputs and (found := inputs(config)):
            data[f"{s}:inputs"] = found
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _dump(section):
    return section.model_dump(mode="json") if section is not None else None


def planned(config: Config) -> list[str]:
    stages = registry.stages()
    if config.stages:
        unknown = [s for s in config.stages if s not in stages]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown} in `stages`", hint=f"valid stages: {', '.join(stages)}")
        return [s for s in stages if s in config.stages]
    return [
        name for name, stage in stages.items() if stage.section is None or config.section(stage.section) is not None
    ]


def run_step(stage: str, config: Config, run: Run, **options) -> dict:
    """Run one stage; on success record its counts and the config it ran with in the manifest."""
    step = registry.stages()[stage].step
    third_party_log[:] = [run.path / "logs" / "third_party.log"]  # where quieted third-party warnings go
    with stage_lines(stage), run.stage(stage) as info, spending_limit(config.budget_usd):
        counts = step(config, run, **options) or {}
        info.update(counts)
        info["config_hash"] = section_hash(config, stage)
    run.update_manifest(config=snapshot(config))
    return counts


def snapshot(config: Config) -> dict:
    """The config as run (secrets are only env-var names, so it is safe to store)."""
    data = config.model_dump(mode="json")
    data["source"] = str(config.source) if config.source else None
    return data


def run_pipeline(
    config: Config, run: Run, *, start: str | None = None, until: str | None = None, force: bool = False
) -> list[str]:
    """Run the planned stages; returns the ones that ran."""
    stages = planned(config)
    for name in (start, until):
        if name and name not in stages:
            raise ConfigError(
                f"stage {name!r} is not planned by this config", hint=f"planned stages: {', '.join(stages)}"
            )
    if start:
        stages = stages[stages.index(start) :]
    if until:
        stages = stages[: stages.index(until) + 1]
    ran: list[str] = []
    for stage in stages:
        info = run.stage_info(stage)
        fresh = info.get("status") == "complete" and info.get("config_hash") == section_hash(config, stage)
        if fresh and not ran and not force and not (start and stage == start):
            console.print(f"[dim]{stage}: complete, skipped[/dim]")
            continue
        run_step(stage, config, run)
        ran.append(stage)
    return ran
