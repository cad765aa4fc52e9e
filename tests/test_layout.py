"""The package layout's import rules (issue 12).

- ``core/`` imports only the standard library, ``torch`` and ``core/`` itself, and
  loads with torch-pruning and NNI blocked.
- A host (``torch_pruning``, ``nni``) is imported only in the folder of that name.
- A private ``_x`` module is imported only from its own folder.
- Every module has ``__all__``.

The rules are read from the source (every import statement, at any depth, under
``TYPE_CHECKING`` too) of the ``cpmc_plugin`` that Python imports. Each rule is
checked on the first folders laid out (``core/``, ``torch_pruning/``) and on the
whole package.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HOSTS = ("torch_pruning", "nni")
ALLOWED_IN_CORE = frozenset(sys.stdlib_module_names) | {"torch"}


def _package_dir() -> Path:
    spec = importlib.util.find_spec("cpmc_plugin")  # finds it without running its __init__
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


PACKAGE = _package_dir()


def _name(path: Path) -> str:
    """``cpmc_plugin.core.validate`` for ``.../cpmc_plugin/core/validate.py``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("cpmc_plugin",) + (parts[:-1] if parts[-1] == "__init__" else parts))


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports_in(
    source: str, name: str, is_package: bool, modules: set[str] | dict[str, Path] = MODULES
) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the source of module ``name``.

    ``from a import b`` yields ``a.b`` when that is one of ``modules``, else ``a``.
    """
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[: len(parts) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else base))
    return list(dict.fromkeys(found))  # one entry per line and module


def _imports(path: Path) -> list[tuple[int, str]]:
    return _imports_in(path.read_text(), _name(path), path.name == "__init__.py")


def _modules_under(scope: tuple[str, ...]) -> dict[str, Path]:
    """The modules of the folders in ``scope`` (``()``: the whole package)."""
    found = {
        name: path
        for name, path in MODULES.items()
        if not scope or path.relative_to(PACKAGE).parts[0] in scope
    }
    assert found, f"no modules under {scope}"  # a rule over no module proves nothing
    return found


LAID_OUT = ("core", "torch_pruning")
SCOPES = [
    pytest.param(LAID_OUT, id="laid-out"),
    pytest.param((), id="package"),
]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE)}:{line}"


def test_the_laid_out_folders_exist():
    for folder in LAID_OUT:
        assert (PACKAGE / folder / "__init__.py").is_file(), folder
    assert {"cpmc_plugin.core.validate", "cpmc_plugin.core.registry"} <= set(MODULES)


def _import_core(stub_parent: bool) -> subprocess.CompletedProcess[str]:
    """Import every ``cpmc_plugin.core`` module in a fresh interpreter, hosts blocked."""
    stub = (
        "spec = importlib.util.find_spec('cpmc_plugin')\n"
        "pkg = types.ModuleType('cpmc_plugin')\n"
        "pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['cpmc_plugin'] = pkg\n"
    )
    script = (
        "import importlib.abc, importlib.util, pkgutil, sys, types\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {set(HOSTS)!r}:\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        + (stub if stub_parent else "")
        + "import cpmc_plugin.core as core\n"
        "names = [i.name for i in pkgutil.walk_packages(core.__path__, 'cpmc_plugin.core.')]\n"
        "for name in names:\n"
        "    __import__(name)\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] in {set(HOSTS)!r}]\n"
        "print('ok', len(names))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def test_core_modules_import_without_the_hosts():
    """The core's own modules (the package ``__init__`` skipped) need neither host."""
    done = _import_core(stub_parent=True)
    assert done.returncode == 0, done.stderr
    count = sum(1 for name in MODULES if name.startswith("cpmc_plugin.core."))
    assert done.stdout.split() == ["ok", str(count)], done.stdout


def test_core_imports_without_the_hosts():
    """``import cpmc_plugin.core`` through the real (lazy) package ``__init__``."""
    done = _import_core(stub_parent=False)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr


@pytest.mark.parametrize("scope", SCOPES)
def test_a_host_is_imported_only_in_its_folder(scope):
    wrong = [
        f"{_where(path, line)} imports {target}"
        for path in _modules_under(scope).values()
        for line, target in _imports(path)
        if target.split(".")[0] in HOSTS
        and path.relative_to(PACKAGE).parts[0] != target.split(".")[0]
    ]
    assert not wrong, "\n".join(wrong)


def test_core_imports_only_core():
    wrong = []
    for path in _modules_under(("core",)).values():
        for line, target in _imports(path):
            top = target.split(".")[0]
            inside = target == "cpmc_plugin.core" or target.startswith("cpmc_plugin.core.")
            if (top == "cpmc_plugin" and not inside) or (
                top != "cpmc_plugin" and top not in ALLOWED_IN_CORE
            ):
                wrong.append(f"{_where(path, line)} imports {target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("scope", SCOPES)
def test_private_modules_stay_in_their_folder(scope):
    wrong = []
    for name, path in _modules_under(scope).items():
        folder = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for line, target in _imports(path):
            if target.split(".")[0] != "cpmc_plugin":
                continue
            parts = target.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_")]
            # the folder holding the first private part must be the importer's folder
            if private and ".".join(parts[: private[0]]) != folder:
                wrong.append(f"{_where(path, line)} imports {target}")
    assert not wrong, "\n".join(wrong)


def _has_all(path: Path) -> bool:
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


@pytest.mark.parametrize("scope", SCOPES)
def test_every_module_has_dunder_all(scope):
    missing = [
        str(p.relative_to(PACKAGE)) for p in _modules_under(scope).values() if not _has_all(p)
    ]
    assert not missing, missing


def test_the_import_reader_resolves_imports():
    """The AST reader itself, on known lines (a reader that finds nothing passes every rule)."""
    source = (
        "import torch_pruning as tp, os\n"
        "from . import validate\n"
        "from ..torch_pruning.host import Group\n"
        "from .layers import unwrap\n"
        "from .. import core\n"
        "def f():\n"
        "    from nni.compression import pruning\n"
    )
    modules = {"cpmc_plugin.core", "cpmc_plugin.core.validate", "cpmc_plugin.core.layers"}
    got = _imports_in(source, "cpmc_plugin.core.example", False, modules)
    assert got == [
        (1, "torch_pruning"),
        (1, "os"),
        (2, "cpmc_plugin.core.validate"),
        (3, "cpmc_plugin.torch_pruning.host"),
        (4, "cpmc_plugin.core.layers"),
        (5, "cpmc_plugin.core"),
        (7, "nni.compression"),
    ]
    # in a package's __init__, "." is the package itself
    init = "from .registry import Registry\nfrom . import registry\n"
    assert _imports_in(init, "cpmc_plugin.core", True, {"cpmc_plugin.core.registry"}) == [
        (1, "cpmc_plugin.core.registry"),
        (2, "cpmc_plugin.core.registry"),
    ]


# ---------------------------------------------------------------------- issue 24
def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, every import counted (function-level and
    ``TYPE_CHECKING`` ones too)."""
    return {
        name: {target for _, target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No two modules import each other, directly or around a loop, by any import."""
    cycles = _cycles(_import_graph(MODULES))
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


#: the modules that read another library's private names, and which: each is that
#: library's one boundary (see their docstrings)
BOUNDARIES = {
    "cpmc_plugin.core.torch_private": "torch's layer base classes, a tensor's version",
    "cpmc_plugin.torch_pruning.host": "torch-pruning's graph and group state",
    "cpmc_plugin.attention.eager": "transformers' config._attn_implementation",
}
#: underscore names that are public by their library's documentation
DOCUMENTED = ("_fields", "_asdict", "_replace")


def _private_reads(path: Path) -> list[tuple[int, str]]:
    """``x._name`` (and ``getattr(x, "_name")``) where ``x`` is not ``self`` or ``cls``,
    and ``from module import _name`` of a package module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        name, base = None, None
        if isinstance(node, ast.Attribute):
            name, base = node.attr, node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name, base = node.args[1].value, node.args[0]
        elif isinstance(node, ast.ImportFrom) and (
            node.level or "cpmc_plugin" in (node.module or "")
        ):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("_")]
            continue
        if name is None or not name.startswith("_") or name.startswith("__"):
            continue
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if name in DOCUMENTED:
            continue
        found.append((node.lineno, f"{ast.unparse(base)}.{name}"))
    return found


def test_the_private_reader_finds_private_reads(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "from .x import _hidden, shown\n"
        "def f(self, graph, t):\n"
        "    self._mine, t._fields\n"
        "    graph._module2name\n"
        "    getattr(graph, '_history', None)\n"
    )
    assert _private_reads(source) == [
        (1, "_hidden"),
        (4, "graph._module2name"),
        (5, "graph._history"),
    ]


def test_no_module_reads_another_objects_private_attributes():
    wrong = [
        f"{_where(path, line)} reads {what}"
        for name, path in MODULES.items()
        if name not in BOUNDARIES
        for line, what in _private_reads(path)
    ]
    assert not wrong, "\n".join(wrong)


MAX_LINES = 500


def test_no_source_file_is_over_500_lines():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in MODULES.values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_shim_finder_finds_shims(tmp_path):
    shim, real = tmp_path / "shim.py", tmp_path / "real.py"
    shim.write_text('"""Moved."""\nfrom .x import a\n\n__all__ = ["a"]\n')
    real.write_text('"""Real."""\nfrom .x import a\n\n__all__ = ["b"]\nb = a\n')
    assert _only_reexports(shim) and not _only_reexports(real)


def _only_reexports(path: Path) -> bool:
    """A module whose body is a docstring, imports and ``__all__`` (and no lazy table)."""
    body = ast.parse(path.read_text()).body
    kinds = []
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.Import | ast.ImportFrom):
            kinds.append("import")
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if all(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                continue
            return False
        else:
            return False
    return "import" in kinds


def test_no_module_only_reexports():
    """Every module defines something: no shim at an old path that only imports names
    from their new place. (A package's ``__init__`` is the package's face: it may
    gather the names its modules define.)"""
    shims = [
        str(p.relative_to(PACKAGE))
        for p in MODULES.values()
        if p.name != "__init__.py" and _only_reexports(p)
    ]
    assert not shims, shims
