#!/usr/bin/env python3
"""Fails when modules of one crate import each other in a circle.

Cargo forbids circles between crates; inside a crate the compiler allows them, and they are how
ownership blurs (two modules that each need the other have one concept between them). For every
crate root (src/lib.rs, src/main.rs) this follows the `mod` declarations to the module files,
collects what each file names through `crate::`, `super::` and `self::` paths, and looks for
cycles among sibling modules (the children of one module, each standing for its whole subtree).
A child using its parent's items, and a parent using its children's, are the ordinary facade
pattern and not counted; nor are unit tests (`#[cfg(test)] mod tests`), which may build their
fixtures from any sibling.

Usage: scripts/module-cycles.py [CRATE_DIR ...]   (default: every workspace member)
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
USE = re.compile(r"\buse\s+((?:crate|super|self)::[^;]+);")


def modules(root_file):
    """Maps module path (tuple) → file, following `mod x;` from a crate root."""
    found = {(): root_file}
    stack = [((), root_file)]
    while stack:
        path, file = stack.pop()
        text = file.read_text()
        is_dir_owner = file.name in ("lib.rs", "main.rs", "mod.rs")
        base = file.parent if is_dir_owner else file.parent / file.stem
        for name in MOD.findall(text):
            if name == "tests":  # unit tests in a file of their own: not part of the graph
                continue
            for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
                if candidate.is_file():
                    child = path + (name,)
                    found[child] = candidate
                    stack.append((child, candidate))
                    break
    return found


def expand(tree):
    """The paths a use tree names: `a::{b, c::{d, e as f}}` → a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    if "{" not in tree:
        return [tree]
    start = tree.index("{")
    prefix, inner = tree[:start], tree[start + 1:tree.rindex("}")]
    items, depth, current = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += (ch == "{") - (ch == "}")
        current += ch
    items.append(current)
    return [prefix + path for item in items if item for path in expand(item)]


def references(text, here):
    """Absolute paths (tuples) named from the module at `here`."""
    # Comments, but not the `//` of a URL in a string (it follows a colon).
    text = re.sub(r"(^|[^:])//.*", r"\1", text)
    # Unit tests (by convention the file's last item) may use any sibling to build fixtures.
    text = re.split(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+tests\b", text)[0]
    paths = []
    for tree in USE.findall(text):
        for path in expand(tree):
            kind, _, rest = path.partition("::")
            if kind in ("crate", "super", "self"):
                paths.append((kind, "::" + rest))
    paths += PATH.findall(USE.sub("", text))
    out = []
    for kind, rest in paths:
        parts = [p for p in rest.split("::") if p and p != "*"]
        if kind == "crate":
            base = ()
        elif kind == "self":
            base = here
        else:
            base = here[:-1]
        while parts and parts[0] == "super":
            parts.pop(0)
            base = base[:-1]
        out.append(base + tuple(parts))
    return out


def resolve(path, known):
    """The longest known module that `path` lies in."""
    for n in range(len(path), -1, -1):
        if path[:n] in known:
            return path[:n]
    return ()


def cycles(root_file):
    known = modules(root_file)
    edges = {}
    for here, file in known.items():
        for target in references(file.read_text(), here):
            there = resolve(target, known)
            common = 0
            while common < min(len(here), len(there)) and here[common] == there[common]:
                common += 1
            if common == len(here) or common == len(there):
                continue  # ancestor and descendant: the facade pattern
            parent = here[:common]
            a, b = here[: common + 1], there[: common + 1]
            edges.setdefault(parent, {}).setdefault(a, set()).add(b)
    found = []
    for parent, graph in edges.items():
        state = {}

        def visit(node, trail):
            state[node] = "open"
            for nxt in sorted(graph.get(node, ())):
                if state.get(nxt) == "open":
                    found.append(trail[trail.index(nxt):] + [nxt])
                elif nxt not in state:
                    visit(nxt, trail + [nxt])
            state[node] = "done"

        for node in sorted(graph):
            if node not in state:
                visit(node, [node])
    return found


def main():
    crates = [Path(a) for a in sys.argv[1:]] or [
        ROOT / m for m in re.findall(r'"([^"]+)"', re.search(r"members\s*=\s*\[([^]]*)\]",
                                                              (ROOT / "Cargo.toml").read_text()).group(1))
    ]
    bad = 0
    roots = 0
    for crate in crates:
        for root in (crate / "src" / "lib.rs", crate / "src" / "main.rs"):
            if not root.is_file():
                continue
            roots += 1
            for cycle in cycles(root):
                bad += 1
                names = " -> ".join("::".join(m) or "crate" for m in cycle)
                print(f"{root}: import circle {names}")
    print(f"{roots} crate roots, {bad} import circles")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
