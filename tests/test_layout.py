"""The layout rules of docs/architecture.md, read from the source with `ast` (nothing imported):
no import cycle among modules nor among the packages of ifp_jax, and the library (everything in
ifp_jax outside commands/, experiments/ and benchmarks/) imports none of those three."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "ifp_jax"
# Who may import each non-library part (the part itself always may).
ALLOWED_IMPORTERS = {
    "ifp_jax.commands": ("ifp_jax.commands", "ifp_jax.__main__"),
    "ifp_jax.experiments": ("ifp_jax.commands",),
    "ifp_jax.benchmarks": ("ifp_jax.commands",),
}


def _modules() -> dict[str, str]:
    """{dotted module name: file path} of every module of the package."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, at any depth of the file (lazy imports
    inside functions count: they are imports all the same)."""
    graph = {}
    for name, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        edges = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # a name imported from a module -> the module
                    t = t.rpartition(".")[0]
                if t and t != name and t != PACKAGE:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "done"
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def _within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_through_others():
    cycle = find_cycle(import_graph(_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph seen package by package: ifp_jax.<part>[...] -> <part> (a top-level
    module such as ifp_jax.config is a part of its own)."""
    part = lambda m: m.split(".")[1] if m.count(".") else m
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(part(m), set()).update(part(t) for t in targets if part(t) != part(m))
    return out


def test_no_package_imports_itself_through_others():
    cycle = find_cycle(package_graph(import_graph(_modules())))
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_the_library_imports_neither_commands_nor_experiments_nor_benchmarks():
    graph = import_graph(_modules())
    wrong = [f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in sorted(targets)
             for part, allowed in ALLOWED_IMPORTERS.items()
             if _within(t, part) and not _within(m, part)
             and not any(_within(m, a) for a in allowed)]
    assert not wrong, "; ".join(wrong)


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    """The reader of the rules must see the imports that hide: inside functions, relative."""
    mods = {"ifp_jax": "ifp_jax/__init__.py", "ifp_jax.a": str(tmp_path / "a.py"),
            "ifp_jax.b": str(tmp_path / "b.py"), "ifp_jax.p": str(tmp_path / "p/__init__.py"),
            "ifp_jax.p.c": str(tmp_path / "p/c.py")}
    (tmp_path / "p").mkdir()
    (tmp_path / "a.py").write_text("def f():\n    from ifp_jax.b import g\n")
    (tmp_path / "b.py").write_text("from .p import c\n")
    (tmp_path / "p/__init__.py").write_text("from . import c\n")
    (tmp_path / "p/c.py").write_text("from .. import a\n")
    mods["ifp_jax"] = str(tmp_path / "__init__.py")
    (tmp_path / "__init__.py").write_text("")
    graph = import_graph(mods)
    assert graph["ifp_jax.a"] == {"ifp_jax.b"}
    assert graph["ifp_jax.b"] == {"ifp_jax.p", "ifp_jax.p.c"}
    assert graph["ifp_jax.p"] == {"ifp_jax.p.c"}
    assert graph["ifp_jax.p.c"] == {"ifp_jax.a"}
    assert package_graph(graph) == {"ifp_jax": set(), "a": {"b"}, "b": {"p"}, "p": {"a"}}
    assert find_cycle(package_graph(graph)) == ["a", "b", "p", "a"]
