"""The package's layer rule and its absence of import cycles, read from the source.

polyproc is built in layers (ARCHITECTURE.md, "Layers"), one folder each::

    leaf        _exceptions, _platform, _cpu, _public
    transport   _transport/     bytes across a process boundary
    engines     _process/ -> _queue/ -> _pool/ -> _managers/
    public      polyproc/__init__.py and the modules with the stdlib's names
    cli         _cli/, __main__.py (clients of the public API)

A module may import its own layer and the layers below it, never above:
an engine never imports a public module (the public layer passes it what
it needs, such as the context), transport never imports an engine.  The
engines build on one another in the order shown (a pool starts processes,
a manager serves pools and queues), never back.  And no module imports
another that imports it back, directly or through others, whether at the
top of the module or lazily inside a function: every ``import`` statement
counts, because a lazy import is still a dependency, only a later one.

The pool's backends are loaded by name (``_pool/backend.py``), so nothing
outside ``_pool/_backends/`` imports them: Pool and Executor see only the
``Backend`` protocol.

The check is an AST walk over the files, so it sees every import statement
whether or not the code path that runs it is exercised by other tests.
"""
from __future__ import annotations

import ast
import pathlib
import re

import polyproc

PACKAGE = pathlib.Path(polyproc.__file__).parent

# Lowest first.  A module belongs to the first entry whose prefix it has.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaf", ("polyproc._exceptions", "polyproc._platform", "polyproc._cpu",
              "polyproc._public")),
    ("transport", ("polyproc._transport",)),
    ("process engine", ("polyproc._process",)),
    ("queue engine", ("polyproc._queue",)),
    # _observe (insights, timeline) builds on the pool's instruments and
    # Pool/Executor attach it: one layer, and the cycle check keeps
    # _observe from importing what imports it.
    ("pool engine", ("polyproc._pool", "polyproc._observe")),
    ("managers engine", ("polyproc._managers",)),
    ("cli", ("polyproc._cli", "polyproc.__main__")),
    # Everything else is public: polyproc itself, polyproc.pool, ...
]
PUBLIC_RANK = len(LAYERS) - 1   # just below the command line
CLI_RANK = len(LAYERS)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str, modules: dict[str, pathlib.Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, modules: dict[str, pathlib.Path]) -> set[str]:
    """The polyproc modules *name* imports, anywhere in its source."""
    path = modules[name]
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the module pkg.sub when there is one.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                       else source for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules)
    found.discard(name)
    return found


def _rank(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS[:-1]):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return rank
    if name == "polyproc._cli" or name.startswith("polyproc._cli.") \
            or name == "polyproc.__main__":
        return CLI_RANK
    assert not name.rpartition(".")[2].startswith("_") or name.endswith(".__init__"), (
        f"{name} is a private module outside every layer: put it in a layer's "
        f"folder, or add it to LAYERS in tests/test_layers.py")
    return PUBLIC_RANK


def _layer_name(rank: int) -> str:
    return "public" if rank == PUBLIC_RANK else (
        "cli" if rank == CLI_RANK else LAYERS[rank][0])


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, modules) for name in modules}


def _private_parts(name: str) -> list[str]:
    return [p for p in name.split(".")[1:] if p.startswith("_") and p != "__init__"]


def test_every_private_module_is_in_a_layer():
    for name in _modules():
        if name.count(".") >= 1 and _private_parts(name):
            _rank(name)  # raises, naming the module, if it is in none


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for name, targets in _graph().items():
        for target in targets:
            if _rank(target) > _rank(name):
                upward.append(f"{name} ({_layer_name(_rank(name))}) imports "
                              f"{target} ({_layer_name(_rank(target))})")
    assert not upward, "imports that go up the layers:\n  " + "\n  ".join(sorted(upward))


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


def test_no_import_cycles_even_through_lazy_imports():
    cycles = _cycles(_graph())
    assert not cycles, ("modules that import each other (directly or through "
                        "others):\n  " + "\n  ".join(" <-> ".join(c) for c in cycles))


def test_only_the_backend_loader_reaches_the_backends():
    # Pool and Executor use the Backend protocol; the engines behind it are
    # loaded by name (polyproc._pool.backend.load), never imported.
    inside = "polyproc._pool._backends"
    reaching = sorted(f"{name} imports {target}"
                      for name, targets in _graph().items()
                      if not (name == inside or name.startswith(inside + "."))
                      for target in targets
                      if target == inside or target.startswith(inside + "."))
    assert not reaching, "\n  ".join(["imports of a backend from outside:"] + reaching)


def test_the_checks_see_what_they_must():
    # The walk itself: a lazy import inside a function counts, relative
    # imports resolve, and ``from . import sub`` is an import of the module.
    graph = _graph()
    assert "polyproc._transport.serialization" in graph["polyproc._pool.api"] | {
        t for s in graph["polyproc._pool.api"] for t in graph[s]}
    assert "polyproc._process.child" in graph["polyproc.context"]   # a lazy import
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _rank("polyproc._transport.shm") < _rank("polyproc._pool.api") \
        < _rank("polyproc.pool") < _rank("polyproc._cli.demo")


# -- the diagram of a task's path names only what exists -----------------------

ROOT = PACKAGE.parent
_CODE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_PATH = re.compile(r"[\w/]+\.py")


def _architecture_diagram() -> str:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text[text.index("## A task's path (Pool)"):]
    start = section.index("```\n") + 4
    return section[start:section.index("```", start)]


def _scheduler_diagram() -> str:
    doc = ast.get_docstring(ast.parse(
        (PACKAGE / "_pool/_backends/process/scheduler.py").read_text()), clean=False)
    assert doc is not None
    block = doc[doc.index("::\n\n") + 4:]
    return block[:block.index("\n\n")] + "\n"


def _base_name(base: ast.expr) -> str:
    """The class a base expression names: ``ApplyResult`` for ``ApplyResult``
    and for the generic ``ApplyResult[list[_T]]``."""
    if isinstance(base, ast.Subscript):
        base = base.value
    return base.id if isinstance(base, ast.Name) else ""


class _Index:
    """Names the package defines: classes with their members, modules with
    their top-level names, and every other name (methods, attributes set on
    self, thread names given as strings)."""

    def __init__(self) -> None:
        self.classes: dict[str, set[str]] = {}
        self.bases: dict[str, list[str]] = {}
        self.modules: dict[str, set[str]] = {}
        self.names: set[str] = set()
        for path in PACKAGE.rglob("*.py"):
            tree = ast.parse(path.read_text())
            top = set()
            for node in tree.body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    top.add(node.name)
            self.modules.setdefault(path.stem, set()).update(top)
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    members = self.classes.setdefault(node.name, set())
                    self.bases[node.name] = [_base_name(b) for b in node.bases]
                    for sub in ast.walk(node):
                        if isinstance(sub, ast.FunctionDef):
                            members.add(sub.name)
                        elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                                and sub.value.id == "self":
                            members.add(sub.attr)
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    self.names.add(node.name)
                elif isinstance(node, ast.Attribute):
                    self.names.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and node.value.isidentifier():
                    self.names.add(node.value)

    def members(self, cls: str) -> set[str]:
        found = set(self.classes.get(cls, ()))
        for base in self.bases.get(cls, ()):
            found |= self.members(base)
        return found

    def missing(self, diagram: str) -> list[str]:
        """The code names and file paths of *diagram* that the package lacks."""
        wrong = [p for p in _PATH.findall(diagram)
                 if not any(str(f).endswith("/" + p) for f in PACKAGE.rglob("*.py"))]
        for token in _CODE_NAME.findall(_PATH.sub(" ", diagram)):
            if not ("_" in token or "." in token or token != token.lower()):
                continue  # an English word
            head, _, rest = token.partition(".")
            if not rest:
                ok = token in self.names or token in self.classes
            elif head in self.classes:
                ok = rest in self.members(head)
            elif head in self.modules:
                ok = rest in self.modules[head]
            else:  # a variable (sink.deliver): the method must exist somewhere
                ok = rest.rpartition(".")[2] in self.names
            if not ok:
                wrong.append(token)
        return wrong


def test_the_task_path_diagram_names_only_what_exists():
    assert _Index().missing(_architecture_diagram()) == []


def test_the_scheduler_shows_the_same_diagram():
    assert _scheduler_diagram() == _architecture_diagram()


def test_the_diagram_check_catches_made_up_names():
    # The boxes of the diagram before issue 11, which named nothing real.
    assert _Index().missing("receive_results  dispatch_chunks  on_worker_exit "
                            "ProcessScheduler.dispatch (_scheduler.py) caller thread") == [
        "_scheduler.py", "receive_results", "dispatch_chunks", "on_worker_exit",
        "ProcessScheduler.dispatch"]


def test_import_polyproc_imports_no_optional_engine():
    # Dask (the cluster backend) costs 0.35 s to import: only cluster= loads it.
    import subprocess
    import sys
    code = ("import sys, polyproc, polyproc.pool, polyproc.executor\n"
            "print(sorted(m for m in ('distributed', 'dask', 'tqdm', "
            "'polyproc._pool._backends.dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
