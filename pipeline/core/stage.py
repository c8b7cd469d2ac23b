"""What a stage is: one typed object that a package registers under the `prefab.stages` entry point.

    STAGE = Stage(name="route", order=80, step=step, section="route", settings=RouteConfig)

The runner runs stages by `order`; the root config (pipeline/core/config.py:config_model) has one section per
registered stage's `section`, validated by its `settings` model; `prefab NAME --run RUN` runs a stage that brings no
command of its own (pipeline/commands/cli.py). A stage's help is its module's docstring.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is not imported for this: the registry reads stages while `prefab --help` starts
    from pydantic import BaseModel


@dataclass(frozen=True)
class Stage:
    name: str  # as registered (the entry point's name) and as `stages:` and the CLI name it
    order: int  # its place in `prefab run`
    step: Callable[..., dict[str, Any]]  # step(config, run, **options) -> counts for the manifest
    section: str | None = None  # the config section it reads; None: it needs none
    settings: "type[BaseModel] | None" = None  # that section's model
    required: bool = False  # every config must have the section (ingest: a run starts from prompts)
    # what its output depends on besides its section: e.g. the fingerprints of the local checkpoints it calls, so
    # that `prefab run` runs it again after one is retrained in place; {} when nothing
    inputs: Callable[[Any], dict[str, str]] | None = None
