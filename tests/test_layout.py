"""The package's shape: what the light entry points load, no import circles, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "worker"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    """The top-level packages among `modules` that a fresh interpreter has loaded after `statement`."""
    probe = f"import sys\n{statement}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def test_the_producer_api_loads_no_database_crypto_or_mcp() -> None:
    assert _loaded_after("import worker.client", ("sqlalchemy", "cryptography", "mcp")) == []


def test_the_mcp_runtime_loads_no_database() -> None:
    assert _loaded_after("import worker.mcp", ("sqlalchemy",)) == []


def test_registering_the_tasks_loads_no_report_renderer_nor_openai() -> None:
    # Every worker process registers every task; only the reports worker renders and refines.
    loaded = _loaded_after("import worker.tasks", ("openai", "jinja2", "markdown_it", "nh3"))
    assert loaded == []


def test_a_worker_process_loads_none_of_celerys_other_commands() -> None:
    # `mcp-worker worker` runs Celery's worker command without its umbrella command, which loads
    # the REPL and every plugin's command (Flower's Tornado): 11 MiB in each worker process.
    starting = (
        "import worker.cli.worker_process, celery.apps.worker, celery.concurrency.thread\n"
        "from celery.app.utils import find_app\n"
        "find_app('worker').loader.import_default_modules()"
    )
    umbrella = ("celery.bin.celery", "click_repl", "prompt_toolkit", "flower", "tornado")
    assert _loaded_after(starting, umbrella) == []


def test_a_service_config_loads_no_database() -> None:
    assert _loaded_after("import worker.services.config", ("sqlalchemy", "cryptography", "mcp")) == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `worker` that `path` imports anywhere (deferred imports in functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_between_modules() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path} has over {MAX_MODULE_LINES} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_folder_of_the_package_ships() -> None:
    # A folder missing from the list is left out of the wheel (or warns when it holds data).
    import tomllib

    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        ".".join(path.relative_to(PACKAGE.parent).parts)
        for path in [PACKAGE, *PACKAGE.rglob("*")]
        if path.is_dir() and path.name != "__pycache__"
    }
    assert folders <= listed, folders - listed
