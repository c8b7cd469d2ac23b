"""What each package adds to prefab, found through entry points in pyproject.toml (the way llm finds its
plugins), so that pipeline/ names no other package:

- `prefab.stages`: a module with `step(config, run, **options) -> dict`, `SECTION` (the config section it
  needs, or None) and `ORDER` (its place in `prefab run`); the entry point's name is the stage's name;
- `prefab.commands`: a list of click commands added to `prefab`;
- `prefab.report`: a list of functions `(run) -> html | None`, sections of report.html.

A new stage, command or report section elsewhere (another package too) registers the same way.
"""

from functools import cache
from importlib.metadata import entry_points

from pipeline.errors import ConfigError


def _load(group: str) -> dict:
    found = {ep.name: ep.load() for ep in entry_points(group=group)}
    if not found:
        raise ConfigError(f"nothing is registered under the entry point group {group!r}",
                          hint="install prefab so its entry points are known: pip install -e . (or make venv)")
    return found


@cache
def stages() -> dict:
    """stage name -> module, in pipeline order."""
    return dict(sorted(_load("prefab.stages").items(), key=lambda item: item[1].ORDER))


@cache
def commands() -> list:
    return [command for group in _load("prefab.commands").values() for command in group]


@cache
def report_sections() -> list:
    return [section for group in _load("prefab.report").values() for section in group]
