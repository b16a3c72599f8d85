"""The package's structure in figures: imports that run back up the stages, import circles, modules over the size
limit. `tests/test_architecture.py` holds the package to it.

    .venv/bin/python scripts/check_structure.py      # prints the figures; exit 1 when a rule is broken

The stages, lowest first: a package may import its own modules and those of lower packages, never a higher one.
Imports under `if TYPE_CHECKING:` count too: a circle for the type checker is a circle for the reader.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tritonctl"
ORDER = ("core", "vision", "model", "serving", "inference", "sources", "outputs", "stream", "measure", "deploy", "cli")
MAX_LINES = 500


@dataclass
class Structure:
    upward: list[str] = field(default_factory=list)  # "a.b -> c.d (line n)"
    circles: list[list[str]] = field(default_factory=list)
    big: list[tuple[str, int]] = field(default_factory=list)
    modules: int = 0
    packages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.upward or self.circles or self.big)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _stage(module: str) -> str | None:
    parts = module.split(".")
    if module == "tritonctl.cli":
        return "cli"
    return parts[1] if len(parts) > 2 and parts[1] in ORDER else None


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tritonctl."):
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("tritonctl.")]
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def measure() -> Structure:
    s = Structure()
    files = sorted(PACKAGE.rglob("*.py"))
    names = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        s.modules += 1
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            s.big.append((str(path.relative_to(PACKAGE)), lines))
        mine = _stage(name)
        for target, line in _imports(path):
            if target in names:
                graph[name].add(target)
            theirs = _stage(target)
            if mine and theirs and ORDER.index(theirs) > ORDER.index(mine):
                s.upward.append(f"{name} -> {target} (line {line})")
    s.circles = _circles(graph)
    s.packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    return s


def main() -> int:
    s = measure()
    print(f"{s.modules} modules in {len(s.packages)} packages ({', '.join(s.packages)})")
    print(f"imports that run back up: {len(s.upward)}")
    for line in s.upward:
        print("  " + line)
    print(f"import circles: {len(s.circles)}")
    for circle in s.circles:
        print("  " + " <-> ".join(circle))
    print(f"modules over {MAX_LINES} lines: {len(s.big)}")
    for path, lines in s.big:
        print(f"  {path}: {lines}")
    return 0 if s.ok else 1


if __name__ == "__main__":
    sys.exit(main())
