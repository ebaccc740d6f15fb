"""The house rules of the layout (docs/contracts.md): no import circle, no folder of more than 15 modules,
cache_tools imports neither stage, train never imports the teacher. Read from the source (ast), no imports."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "cache_tools", "train")
TEACHER = ("pipeline.teacher", "pipeline.teacher_input", "pipeline.teacher_audio", "pipeline.targets", "laion_clap",
           "clap_module")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (annotations only, never imported)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of ours (or a teacher package) that `path` imports at run time, at any depth of the file."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            found.update(subs or [node.module])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known or m.startswith(TEACHER)}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next((w for w in it if w in g), None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop(); on.discard(x); comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_for_annotations_only_are_not_edges(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import b\nelse:\n    import c\n"
                 "def f():\n    import d\n")
    assert imports(f, {"a.b": f, "c": f, "d": f}) == {"c", "d"}


def test_no_folder_of_more_than_15_modules():
    crowded = {str(d.relative_to(ROOT)): n for pkg in PACKAGES for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
               if d.is_dir() and (n := len([p for p in d.glob("*.py") if p.name != "__init__.py"])) > 15}
    assert crowded == {}


def test_stages_talk_through_stores_and_checkpoints():
    g = graph()
    assert {m: sorted(d) for m, d in g.items() if m.startswith("cache_tools")
            and any(x.startswith(("pipeline", "train")) for x in d)} == {}
    assert {m: sorted(d) for m, d in g.items() if m.startswith("train") and any(x.startswith(TEACHER) for x in d)} == {}
