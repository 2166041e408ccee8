"""The package's layering, read from its own imports (module-level and function-local ones alike, parsed with ``ast``).

The order (``docs/architecture.md``), lowest first; a module may import its own component and any component of a
lower layer, nothing else:

    foundation → data → models → features | evaluation → selection → tasks → run | report

Components of one layer (features and evaluation; run and report) do not import each other. Any cycle between
modules fails too. Importing ``goracs.x.y`` counts as an edge to that module only (not to the ``goracs.x`` package
whose ``__init__`` Python also runs), so that a package re-exporting its modules is not a cycle with them.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# component -> (layer, module prefixes); a module belongs to the component of its longest matching prefix.
COMPONENTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "foundation": (0, ("goracs", "goracs.errors", "goracs.config_dir", "goracs.config", "goracs.cache",
                       "goracs.task_protocol", "goracs.option_types")),
    "data": (1, ("goracs.data",)),
    "models": (2, ("goracs.models", "goracs.exports")),
    "features": (3, ("goracs.features",)),
    "evaluation": (3, ("goracs.evaluation",)),
    "selection": (4, ("goracs.selection",)),
    "tasks": (5, ("goracs.tasks",)),
    "run": (6, ("goracs.run", "goracs.run_record", "goracs.sweep_summary", "goracs.tracking", "goracs.job_check",
                "goracs.command_line", "goracs.ranks", "goracs.job_devices")),
    "report": (6, ("goracs.report",)),
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``root/goracs`` (a package is named by its ``__init__.py``)."""
    out = {}
    for path in sorted((root / "goracs").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported goracs module) of every import statement in the file, wherever it sits (function bodies,
    ``if TYPE_CHECKING:`` blocks included). ``from pkg import x`` names the module ``pkg.x`` when that is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
    return [(line, target) for line, target in found if target == "goracs" or target.startswith("goracs.")]


def component(module: str) -> str:
    best, length = None, -1
    for comp, (_, prefixes) in COMPONENTS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = comp, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no component: add it to COMPONENTS (and docs/architecture.md)")
    return best


@lru_cache(maxsize=None)
def graph(root: Path) -> dict[str, list[tuple[int, str]]]:
    modules = module_names(root)
    known = set(modules)
    return {name: [(line, t) for line, t in imports(name, path, known) if t != name] for name, path in modules.items()}


def layer_violations(root: Path) -> list[str]:
    """Every import that runs against the order: to a higher layer, or across components of one layer."""
    bad = []
    for name, edges in graph(root).items():
        src = component(name)
        for line, target in edges:
            dst = component(target)
            if dst != src and COMPONENTS[dst][0] >= COMPONENTS[src][0]:
                bad.append(f"{name}:{line} imports {target} ({src} → {dst})")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    edges = {name: sorted({t for _, t in targets}) for name, targets in graph(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_import_follows_the_layer_order():
    assert layer_violations(REPO) == []


def test_no_import_cycle():
    assert cycles(REPO) == []


def test_the_task_protocol_imports_nothing_of_goracs():
    modules = module_names(REPO)
    assert imports("goracs.task_protocol", modules["goracs.task_protocol"], set(modules)) == []


def test_only_run_and_the_tests_reach_the_concrete_tasks():
    users = sorted(name for name, edges in graph(REPO).items() for _, t in edges if t == "goracs.tasks")
    assert users == [], users  # goracs.run builds its task from the config's _target_, importing nothing by name


# --- the checker itself, on a small synthetic package -------------------------------------------------------------

def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"goracs/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("source", [
    "from goracs.tasks import SeqRecTask\n",                       # a module-level reversed import
    "def f():\n    from goracs.tasks import SeqRecTask\n",         # a function-local one
    "def f():\n    from ..tasks import SeqRecTask\n",              # a relative one
    "def f():\n    import goracs.evaluation.records\n",            # across one layer's components
])
def test_the_checker_finds_a_reversed_import(tmp_path, source):
    root = _package(tmp_path, {"goracs/tasks.py": "", "goracs/evaluation/__init__.py": "",
                               "goracs/evaluation/records.py": "", "goracs/features/__init__.py": "",
                               "goracs/features/store.py": source})
    bad = layer_violations(root)
    assert len(bad) == 1 and bad[0].startswith("goracs.features.store:"), bad


def test_the_checker_finds_a_cycle_and_accepts_a_downward_import(tmp_path):
    root = _package(tmp_path, {"goracs/errors.py": "from goracs import cache\n",
                               "goracs/cache.py": "def f():\n    from goracs.errors import E\n",
                               "goracs/data/__init__.py": "from goracs.data.samples import S\n",
                               "goracs/data/samples.py": "from goracs.errors import E\n"})
    assert layer_violations(root) == []
    assert cycles(root) == [["goracs.cache", "goracs.errors"]]
