"""The direction of imports: pipeline/ is the foundation and names no other package (stages, commands and
report sections of labeling/ and training/ come through entry points); inside it the layers, by folder, import only
downwards (core <- models, sandbox <- stages <- commands); and no module imports itself back through others, at
module level or inside a function."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "labeling", "training")


def project_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports_of(path: Path, modules: dict) -> set[str]:
    """Project modules a file imports anywhere in it (a lazy import inside a function counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def test_pipeline_imports_nothing_of_labeling_or_training_by_name_or_by_string():
    modules = project_modules()
    for name, path in modules.items():
        if not name.startswith("pipeline"):
            continue
        assert not {m for m in imports_of(path, modules) if not m.startswith("pipeline")}, name
        strings = {
            n.value
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        named = {s for s in strings if s.startswith(("labeling.", "training.")) and s.split(":")[0] in modules}
        assert not named, f"{name} names {named}"


LAYERS = {
    "core": 0,
    "models": 1,
    "sandbox": 1,
    "stages": 2,
    "commands": 3,
}  # a layer imports only layers below it, and itself


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"  # pipeline/__init__ sits with core


def test_pipeline_layers_import_only_downwards():
    modules = project_modules()
    assert {layer(name) for name in modules if name.startswith("pipeline.")} == set(LAYERS)
    wrong = []
    for name, path in modules.items():
        if not name.startswith("pipeline"):
            continue
        for target in imports_of(path, modules):
            if (
                target.startswith("pipeline")
                and layer(target) != layer(name)
                and LAYERS[layer(target)] >= LAYERS[layer(name)]
            ):
                wrong.append(f"{name} ({layer(name)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    # a package imports its own modules only through them; an edge to a package __init__ is not a cycle by itself
    done, path_stack = set(), []

    def visit(node: str) -> None:
        if node in path_stack:
            cycle = path_stack[path_stack.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path_stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path_stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_every_pipeline_module_imports_with_labeling_and_training_blocked():
    """In a fresh interpreter where `import labeling` / `import training` fail, every pipeline module imports."""
    names = [n for n in project_modules() if n.startswith("pipeline")]
    code = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("labeling", "training"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
for name in {names!r}:
    importlib.import_module(name)
print("imported", len({names!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(names)}" in result.stdout


def test_stages_commands_and_report_sections_come_from_the_registry():
    from pipeline.commands.cli import cli
    from pipeline.core import registry

    stages = registry.stages()
    assert list(stages) == [
        "ingest",
        "dedup",
        "generate",
        "judge",
        "embed",
        "verify",
        "pair",
        "calibrate",
        "route",
        "push",
        "export",
        "train",
        "report",
    ]
    assert all(callable(s.step) for s in stages.values())
    assert stages["push"].step.__module__ == "labeling.push" and stages["train"].step.__module__ == "training.train"
    names = {c.name for c in registry.commands()}
    assert {"labeling", "push", "pull", "export", "train", "eval", "rounds"} <= names
    assert names <= set(cli.list_commands(None))
    assert set(stages) <= set(cli.list_commands(None))  # every stage has a command: its package's own, or a generic one
    assert {f.__module__ for f in registry.report_sections()} == {"labeling.report", "training.report"}


@pytest.mark.parametrize("module", ["training.cli", "labeling.cli", "training.eval", "labeling.commands_data"])
def test_each_package_module_imports_on_its_own(module):
    """Imported first, in a fresh interpreter: no module depends on pipeline.commands.cli having loaded it."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def root_name(node) -> str:
    """`a` of `a.b.c`."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def test_the_server_side_is_argilla_unmodified_plus_its_search_engine():
    """labeling/server/ runs in the Argilla server's venv: it imports nothing of prefab's other packages, and
    assigns to no attribute of argilla_server, aiosqlite or sqlalchemy (no runtime patch, no setattr)."""
    server = ROOT / "labeling" / "server"
    server_side = sorted(server.rglob("*.py"))
    search = {f"search/{name}.py" for name in ("__init__", "dialects", "query", "scoring", "filters", "engine")}
    assert {p.relative_to(server).as_posix() for p in server_side} >= {"main.py", "postgres.py", *search}
    modules = project_modules()
    foreign = ("argilla_server", "aiosqlite", "sqlalchemy")
    for path in server_side:
        tree = ast.parse(path.read_text())
        assert not imports_of(path, modules), path
        imported = {}  # local name -> module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update({(a.asname or a.name).split(".")[0]: a.name for a in node.names})
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.update({a.asname or a.name: node.module for a in node.names})
        patched = [
            ast.unparse(target)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Attribute) and imported.get(root_name(target), "").startswith(foreign)
        ]
        setattrs = [
            ast.unparse(n)
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setattr"
        ]
        assert not patched and not setattrs, (path, patched, setattrs)
    assert not (ROOT / "labeling" / "argilla_speedups.py").exists()
