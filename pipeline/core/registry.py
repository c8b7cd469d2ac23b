"""What each package adds to prefab, found through entry points in pyproject.toml (the way llm finds its
plugins), so that pipeline/ names no other package:

- `prefab.stages`: a `pipeline.core.stage.Stage` (name, order, step, its config section and settings model); the
  entry point's name is the stage's name;
- `prefab.commands`: a list of click commands added to `prefab`;
- `prefab.report`: a list of functions `(run) -> html | None`, sections of report.html;
- `prefab.status`: a list of functions `(run) -> rich renderable | None`, shown by `prefab status` after the stages;
- `prefab.checks`: a list of functions `(config) -> [pipeline.commands.check.Check]`, rows `prefab check` adds to its
  own;
- `prefab.backends`: a model backend (pipeline/models/backends.py says what one is); the entry point's name is what
  `backend:` in a model's config names. The built-in ones, openai and transformers, register the same way;
  `register_backend` adds one at run time (tests register an in-process fake).

A new stage, command, report section or backend elsewhere (another package too) registers the same way.
"""

from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.core.stage import Stage


def _load(group: str) -> dict:
    found = {ep.name: ep.load() for ep in entry_points(group=group)}
    if not found:
        raise ConfigError(
            f"nothing is registered under the entry point group {group!r}",
            hint="install prefab so its entry points are known: pip install -e . (or make venv)",
        )
    return found


@cache
def stages() -> "dict[str, Stage]":
    """stage name -> Stage, in pipeline order."""
    from pipeline.core.stage import Stage  # start-up: pipeline.core.stage (`prefab --help` reads no stage)

    found = _load("prefab.stages")
    for name, stage in found.items():
        if not isinstance(stage, Stage) or stage.name != name:
            raise ConfigError(
                f"the entry point prefab.stages:{name} is not a Stage named {name!r}: {stage!r}",
                hint='register `NAME = "package.module:STAGE"` with STAGE = Stage(name="NAME", ...)',
            )
    return dict(sorted(found.items(), key=lambda item: item[1].order))


def stage_modules() -> dict[str, str]:
    """stage name -> the module that defines it, read from the entry points without importing any stage (so that
    listing commands stays fast)."""
    return {ep.name: ep.module for ep in entry_points(group="prefab.stages")}


@cache
def commands() -> list:
    return [command for group in _load("prefab.commands").values() for command in group]


@cache
def report_sections() -> list:
    return [section for group in _load("prefab.report").values() for section in group]


@cache
def status_sections() -> list:
    return [section for ep in entry_points(group="prefab.status") for section in ep.load()]


@cache
def checks() -> list:
    return [check for ep in entry_points(group="prefab.checks") for check in ep.load()]


_registered: dict = {}  # register_backend's


def register_backend(name: str, backend) -> None:
    """Make `backend: NAME` use this backend (replacing any of that name) in this process."""
    _registered[name] = backend


def unregister_backend(name: str) -> None:
    _registered.pop(name, None)


def backends() -> dict:
    """backend name -> backend: those of installed packages (prefab's own included), then those registered at run
    time."""
    return {**_entry_point_backends(), **_registered}


def backend(name: str):
    """The backend registered as `name`, or a ConfigError naming the known ones."""
    known = backends()
    if name not in known:
        raise ConfigError(
            f"unknown backend {name!r}",
            hint=f"known backends: {', '.join(sorted(known))} "
            "(a package adds one under the entry point group prefab.backends)",
        )
    return known[name]


@cache
def _entry_point_backends() -> dict:
    return {ep.name: ep.load() for ep in entry_points(group="prefab.backends")}
