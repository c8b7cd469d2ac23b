"""The one errors module: every error meant for a user says what, where and how to fix it.

The CLI prints these without a traceback and exits non-zero; set PREFAB_DEBUG=1 to re-raise.
"""


class PrefabError(Exception):
    """Base for errors a user can act on."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(PrefabError):
    """The YAML config or a CLI option is wrong."""


class InputError(PrefabError):
    """An input file (prompts, export, labels) is missing or malformed."""


def unreadable(path, error: OSError, kind: type[PrefabError] = InputError) -> PrefabError:
    """A file the system will not let us read (permissions, a directory): the user's to fix, so an error, not a
    crash."""
    if isinstance(error, PermissionError):
        hint = f"give your user read access (ls -l {path}; chmod u+r {path}) or copy the file somewhere readable"
    elif isinstance(error, IsADirectoryError):
        hint = "pass a file, not a directory"
    else:
        hint = "check the path and its permissions"
    reason = (
        error.strerror or str(error).split(": ")[0]
    )  # polars' OSErrors carry only a message that ends with the path
    return kind(f"cannot read the file: {reason}", where=str(path), hint=hint)


class RunError(PrefabError):
    """The run directory is missing, incomplete or inconsistent."""


class ModelError(PrefabError):
    """A model could not be loaded or called."""

    exit_code = 3


class LabelingError(PrefabError):
    """The Argilla server or its data is not as expected."""

    exit_code = 4


class ExportError(PrefabError):
    """An export could not be written as asked."""


class SandboxError(PrefabError):
    """Model-written code cannot be isolated on this machine (pipeline/sandbox/bwrap.py): nothing was run."""

    exit_code = 5


class BudgetError(PrefabError):
    """The next calls could take the run past its budget_usd: they were not made; everything finished is kept."""

    exit_code = 6
