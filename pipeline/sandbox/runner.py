"""The script pipeline/sandbox/bwrap.py runs inside bubblewrap to run one candidate's code against its tests.

Standard library only, started as `python -I -S /sandbox_runner.py` by bwrap, already isolated (namespaces,
read-only mounts, no capabilities, an unprivileged uid): the job (code, tests, limits, two fd numbers) is
JSON on stdin. It sets the resource limits, points stdout and stderr at the output memory file, then runs
the code and each test, writing one JSON line per test to the results pipe. The isolation itself is
bwrap's; this only runs Python.
"""

import _ast  # the parser's node classes without `import ast` (6 ms of imports per run)
import json
import os
import resource
import signal
import sys

TYPE_CHECKING = False  # typing's own flag without importing typing (14 ms): mypy takes any name TYPE_CHECKING as True
if TYPE_CHECKING:
    from typing import Any

ERROR_CHARS = 500


def set_limits(limits: dict) -> None:
    """Per process, inherited by every fork; the hard limits equal the soft ones, so the code cannot raise them."""
    mib = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def describe(error: BaseException) -> str:
    try:
        if isinstance(error, SyntaxError):
            text = f"{type(error).__name__}: {error.msg} ({error.filename}, line {error.lineno})"
        else:
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    except BaseException:  # noqa: BLE001 - an exception the code made may fail to print
        text = "an exception that cannot be printed"
    return text[:ERROR_CHARS]


def asserts(node) -> bool:
    """Whether a statement holds an assert outside any function or class it defines."""
    if isinstance(node, _ast.Assert):
        return True
    if isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef, _ast.ClassDef, _ast.Lambda)):
        return False
    for name in node._fields:
        value = getattr(node, name, None)
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, _ast.AST) and asserts(child):
                return True
    return False


def plan(tests: str):
    """The tests as units run in order: each top-level statement holding an assert (a bare assert, or a loop
    of them) and each test_* function is one test; other statements (imports, helpers, data) are setup run
    where they stand."""
    tree = compile(tests, "tests.py", "exec", _ast.PyCF_ONLY_AST)
    assert isinstance(tree, _ast.Module)  # what "exec" mode parses to
    lines = tests.splitlines()
    units: list[tuple[str, str | None, _ast.Module, str | None]] = []
    for node in tree.body:
        module = _ast.Module(body=[node], type_ignores=[])
        if not isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef, _ast.ClassDef)) and asserts(node):
            source = lines[node.lineno - 1][node.col_offset :].strip()
            units.append(("test", f"line {node.lineno}: {source[:80]}", module, None))
        elif isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef)) and node.name.startswith("test"):
            units.append(("test", node.name, module, node.name))
        else:
            units.append(("setup", None, module, None))
    return units


def main() -> None:
    job = json.loads(sys.stdin.read())
    results_fd, output_fd = job["results_fd"], job["output_fd"]

    def emit(**event) -> None:
        os.write(results_fd, (json.dumps(event) + "\n").encode())

    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.closerange(3, results_fd)  # keep only stdin, stdout, stderr and the results pipe
    os.closerange(results_fd + 1, 1024)
    os.chdir("/tmp")
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a file over RLIMIT_FSIZE should end the run
    set_limits(job["limits"])
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    try:
        units = plan(job["tests"])
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        emit(event="fatal", reason="tests_invalid", detail=describe(e))
        return
    names = [u[1] for u in units if u[0] == "test"]
    emit(event="plan", tests=names)
    if not names:
        emit(event="fatal", reason="no_tests", detail="the tests hold no assert statement and no test_* function")
        return
    try:
        compiled = compile(job["code"], "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        emit(event="fatal", reason="syntax_error", detail=describe(e))
        return
    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compiled, namespace)
    except MemoryError as e:
        emit(event="fatal", reason="memory", detail=describe(e))
        return
    except BaseException as e:  # noqa: BLE001 - the code may raise anything, SystemExit included
        emit(event="fatal", reason="code_error", detail=describe(e))
        return
    setup_error = None
    for kind, name, module, function in units:
        try:
            if setup_error is not None and kind == "test":
                raise RuntimeError(f"setup failed: {setup_error}")
            exec(compile(module, "tests.py", "exec"), namespace)
            if function:
                result = namespace[function]()
                if hasattr(result, "__await__"):  # async def test_...: run it, or it would pass unrun
                    import asyncio  # start-up: asyncio

                    asyncio.run(result)
            if kind == "test":
                emit(event="test", name=name, ok=True, error=None)
        except BaseException as e:  # noqa: BLE001
            if kind == "test":
                emit(event="test", name=name, ok=False, error=describe(e))
            elif setup_error is None:
                setup_error = describe(e)
    emit(event="done")


if __name__ == "__main__":
    main()
