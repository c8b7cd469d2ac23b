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


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")


def imports_of(path: Path, modules: dict) -> set[str]:
    """Project modules a file imports anywhere in it (a lazy import inside a function counts too, and a relative
    import is resolved against the file's package); not those under `if TYPE_CHECKING:`, which never run."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    package, found = package_of(path), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
            found.update(n for n in imported_names(node, package) if n in modules)
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
    # a module's own packages are imported before it, whatever it imports (`from . import x` names its package)
    graph = {
        name: {t for t in imports_of(path, modules) if t != name and not name.startswith(t + ".")}
        for name, path in modules.items()
    }
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
        assert all(m.startswith("labeling.server.") for m in imports_of(path, modules)), path
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


HEAVY = (  # each takes 15 ms or more to import on a 2-core machine (measured one by one after click; in the server's
    # venv, argilla_server.cli after the search engine, which has loaded the rest of argilla_server)
    "torch transformers trl peft datasets accelerate safetensors tokenizers huggingface_hub sentence_transformers "
    "matplotlib polars pyarrow numpy pandas scipy sklearn statsmodels krippendorff crowdkit faiss math_verify ray "
    "openai httpx httpx2 argilla argilla_server.cli pydantic yaml asyncio rich.table rich.console rich.progress "
    "urllib.request "
    # and project modules that every `prefab` command (`--help` too) would load otherwise, measured after the CLI's
    # own imports: check loads the model modules whose servers it asks (about 30 ms), the launcher its process and
    # account helpers (8 to 10 ms), stage the dataclass machinery (3 to 4 ms)
    "pipeline.commands.check labeling.launcher pipeline.core.stage"
).split()


def heavy(module: str) -> set[str]:
    return {h for h in HEAVY if module == h or module.startswith(h + ".")}


def imported_names(node, package: str) -> list[str]:
    """The modules an import statement may load, relative imports resolved against the file's package."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def module_level_imports(tree: ast.Module) -> list:
    """Import statements that run when the module is imported (not in a function, not under TYPE_CHECKING)."""
    found = []

    def walk(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                walk(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body])

    walk(tree.body)
    return found


def test_a_function_local_import_defers_something_slow_and_says_so():
    """An import inside a function is there to keep start-up fast: it loads a slow package (HEAVY, or a project module
    that loads one at import) that the module does not load already, and carries a `# start-up:` comment. Any other
    belongs at the top of the module."""
    modules = project_modules()
    sources = {name: path.read_text() for name, path in modules.items()}
    trees = {name: ast.parse(source) for name, source in sources.items()}
    loads: dict[str, set[str]] = {}

    def loaded_by(node, name: str) -> set[str]:
        """The slow packages an import statement in module `name` loads."""
        found = set()
        for target in imported_names(node, package_of(modules[name])):
            found |= heavy(target) | (slow(target) if target in modules else set())
        return found

    def slow(name: str) -> set[str]:
        """The slow packages a project module loads when imported (itself, its parents, what they import)."""
        if name not in loads:
            loads[name] = set()
            parent = name.rpartition(".")[0]
            found = set(slow(parent)) if parent in modules else set()
            for node in module_level_imports(trees[name]):
                found |= loaded_by(node, name)
            loads[name] = found
        return loads[name]

    wrong = []
    for name, path in modules.items():
        lines = sources[name].splitlines()
        already = slow(name)
        for fn in ast.walk(trees[name]):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                deferred = loaded_by(node, name) - already
                where = f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}"
                line = lines[node.lineno - 1]
                if not deferred:
                    wrong.append(f"{where}: loads nothing slow the module has not loaded; import it at the top")
                elif "# start-up:" not in line:
                    wrong.append(f"{where}: say what it defers, `# start-up: {', '.join(sorted(deferred))}`")
                else:
                    named = {n.strip() for n in line.split("# start-up:")[1].split("(")[0].split(",")}
                    if not named <= deferred:
                        wrong.append(f"{where}: names {sorted(named)}; it defers {sorted(deferred)}")
    assert not wrong, f"{len(wrong)} function-local imports:\n" + "\n".join(wrong)


def test_prefab_help_loads_nothing_slow():
    """What every command pays before it starts: `prefab --help` (which reads every package's commands) in a fresh
    interpreter loads none of HEAVY."""
    code = """
import sys
from pipeline.commands.cli import cli
try:
    cli(args=["--help"], prog_name="prefab")
except SystemExit:
    pass
print("LOADED", sorted(sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = [x for x in result.stdout.splitlines() if x.startswith("LOADED ")]
    assert line, result.stdout[-2000:] + result.stderr[-2000:]
    loaded = set(ast.literal_eval(line[-1].removeprefix("LOADED ")))
    assert "labeling.cli" in loaded and "training.cli" in loaded  # the packages' commands were read
    assert not {m for m in loaded if heavy(m)}, sorted(m for m in loaded if heavy(m))
