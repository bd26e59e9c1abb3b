"""Our modules import one way, and no import cycle exists among them (README, "How it works, and where to read it").

Every import of every .py file of the repository is read: at module level and inside functions,
`import a.b`, `from a.b import c` (c a module or a name in a.b) and relative imports
(`from . import x`, `from ..a import b`), each resolved to the file of ours it names. On that
graph between files:

(a) no cycle: every strongly connected part of more than one file (or a file importing itself)
    fails the test, listed as a loop `a -> b -> a`;
(b) every arrow follows LAYERS below: a unit (a top-level module such as edit.py, or a top-level
    folder such as svd/) imports itself and units of lower layers, never a unit of a higher
    layer, and units of one layer know nothing of each other; ONLY, THROUGH and IMPORTED_ONLY_BY
    narrow that further. Every unit must have a layer, so a new module is placed explicitly.

The checker (`import_graph`, `import_cycles`, `layering_violations`) takes the root folder as
an argument: a planted cycle in tmp_path shows that it finds one.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"__pycache__", "runs"}

# The layering, lowest first. A unit may import only itself and units of lower layers.
LAYERS = [
    ("safefiles", "backbone"),      # atomic writes and safe safetensors reads; the Backbone
                                    # interface and its layer catalogue (docs/porting.md)
    ("edm", "attention", "lora",    # generic libraries: EDM sampling and inversion (a denoiser
     "media", "cli"),               # D(x, sigma)), attention hooks (hook points by duck typing,
                                    # layers from the catalogue), LoRA on nn.Linear, video and
                                    # image files, flags from dataclasses: none knows another
    ("svd",),                       # the default backbone: Stable Video Diffusion
    ("configs", "source",           # every knob of edit.py and train.py; stage 2a: SARP, the
     "image_to_video"),             # source's inversion, skip-interval (docs/method.md §4, §7);
                                    # plain image-to-video, the baseline
    ("motion_lora", "refine"),      # stage 1: the motion LoRA (docs/method.md §3); stage 2b:
                                    # appearance refinement and the clip chain (§6, §2)
    ("demo",),                      # the embedded demo: world, tiny model, scores, the bare run
    ("edit", "train"),              # the entry points (`python edit.py` bare runs demo/run.py)
    ("batch_jobs",),                # the job list of batch.py, checked line by line
    ("batch",),                     # many edit.py jobs under torchrun
    ("bench",),                     # scripts that print figures
    ("tests",),
]
# Narrower than the layers: the units a unit may use at all (besides itself) ...
ONLY = {"svd": {"safefiles", "backbone", "edm", "lora", "cli"}}
# ... the files an arrow between two units may start from ...
THROUGH = {("svd", "edm"): {"svd/sampling.py", "svd/backbone.py"},   # SVD as an EDM denoiser
           ("svd", "lora"): {"svd/backbone.py"}}                     # its LoRA naming
# The modules of the method, which see a model only through the Backbone interface: none
# imports svd/, except that each entry point's `main` loads the default backbone.
BACKBONE_ONLY = ("attention", "source", "motion_lora", "refine", "image_to_video", "configs")
DEFAULT_LOADER = {"edit": "main", "train": "main"}
# ... and the units that may import a unit.
IMPORTED_ONLY_BY = {"batch": {"tests"}, "batch_jobs": {"batch", "tests"}}


def module_files(root: Path) -> dict[str, Path]:
    """Every .py file under `root` (hidden folders, __pycache__ and runs/ skipped) by its
    module name: `edit`, `svd.unet`, `demo` for demo/__init__.py."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p.startswith(".") or p in SKIPPED_DIRS for p in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            modules[".".join(parts)] = path
    return modules


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that the dotted `name` is or lies in (the longest prefix that is a
    module: `media.load_video` -> `media`); None if it is not ours."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that module `name` (file `path`) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                 # relative: from the file's package
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            # `from p import c`: the module p.c if there is one, else a name defined in p
            targets = [f"{prefix}.{a.name}" if prefix else a.name for a in node.names]
            targets = [t if t in modules else prefix for t in targets if t in modules or prefix]
        else:
            continue
        found |= {m for m in map(lambda t: resolve(t, modules), targets) if m is not None}
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the modules of ours it imports} for every .py file under `root`."""
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def import_cycles(root: Path) -> list[list[str]]:
    """Loops [a, b, ..., a] of the import graph of `root`: in every strongly connected part of
    more than one module (or a module importing itself; Tarjan's algorithm), shortest loops
    until each of its modules is on one."""
    graph = import_graph(root)
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1 or v in graph[v]:
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    loops = []
    for part in sorted(parts, key=min):
        covered = set()
        for v in sorted(part):                     # loops until every module of it is on one
            if v not in covered:
                loops.append(loop_through(graph, part, v))
                covered |= set(loops[-1])
    return loops


def loop_through(graph: dict[str, set[str]], part: set[str], start: str) -> list[str]:
    """A shortest loop from `start` back to itself inside the strongly connected `part`."""
    paths, seen = [[start]], set()
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & part):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"no loop through {start}")       # a strongly connected part has one


def layering_violations(root: Path, layers, only=None, through=None, imported_only_by=None
                        ) -> list[str]:
    """Every arrow of the import graph of `root` against `layers` (and the narrower rules), as
    lines `file: imports module (why)`; units without a layer are listed too."""
    only, through, imported_only_by = only or {}, through or {}, imported_only_by or {}
    layer_of = {unit: i for i, units in enumerate(layers) for unit in units}
    modules = module_files(root)
    graph = import_graph(root)
    problems = sorted(f"{unit}: a unit without a layer"
                      for unit in {m.split(".")[0] for m in graph} if unit not in layer_of)
    for name, targets in sorted(graph.items()):
        unit, file = name.split(".")[0], modules[name].relative_to(root).as_posix()
        for target in sorted(targets):
            used = target.split(".")[0]
            if used == unit or unit not in layer_of or used not in layer_of:
                continue
            why = None
            if layer_of[used] > layer_of[unit]:
                why = f"{used} is in a higher layer than {unit}"
            elif layer_of[used] == layer_of[unit]:
                why = f"{used} and {unit} share a layer: they know nothing of each other"
            elif unit in only and used not in only[unit]:
                why = f"{unit} may use only {sorted(only[unit])}"
            elif (unit, used) in through and file not in through[(unit, used)]:
                why = f"{unit} uses {used} only in {sorted(through[(unit, used)])}"
            elif used in imported_only_by and unit not in imported_only_by[used]:
                why = f"only {sorted(imported_only_by[used])} import {used}"
            if why:
                problems.append(f"{file}: imports {target} ({why})")
    return problems


# ---------------------------------------------------------------------------------------------
# The repository
# ---------------------------------------------------------------------------------------------

def test_no_import_cycles():
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_follow_the_layers():
    problems = layering_violations(ROOT, LAYERS, ONLY, THROUGH, IMPORTED_ONLY_BY)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def svd_imports(path: Path) -> list[tuple[str, str]]:
    """(function the import is in, or "" at module level; module) of every import of svd/
    in the file."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            names = ([a.name for a in child.names] if isinstance(child, ast.Import) else
                     [child.module or ""] if isinstance(child, ast.ImportFrom) else [])
            found.extend((function, n) for n in names if n == "svd" or n.startswith("svd."))
            visit(child, inner)

    visit(ast.parse(path.read_text()), "")
    return found


def test_the_method_sees_the_model_only_through_the_backbone_interface():
    modules = module_files(ROOT)
    for name, path in modules.items():
        unit = name.split(".")[0]
        if unit in BACKBONE_ONLY:
            assert not svd_imports(path), f"{path.relative_to(ROOT)} imports svd/"
        elif unit in DEFAULT_LOADER:
            assert svd_imports(path) == [(DEFAULT_LOADER[unit], "svd.backbone")], (
                f"{path.relative_to(ROOT)}: svd/ only as the default loader in main")


def test_svd_imports_are_found_wherever_they_are(tmp_path):
    write(tmp_path, {"m.py": "import os\nfrom svd.unet import UNet\n\n\ndef main():\n"
                             "    if True:\n        import svd.backbone\n"})
    assert svd_imports(tmp_path / "m.py") == [("", "svd.unet"), ("main", "svd.backbone")]


def test_the_graph_sees_every_kind_of_import():
    """The arrows the rules rest on are found: a function-level import (edit.py's bare run),
    the one use of edm/ in svd/, package re-exports and `from package import module`."""
    graph = import_graph(ROOT)
    assert "demo.run" in graph["edit"]                     # inside main()
    assert "edm" in graph["svd.sampling"]
    assert "attention.hooks" in graph["attention"]         # attention/__init__.py
    assert "demo.world" in graph["demo.run"]               # from demo import world
    assert {"source", "refine", "motion_lora", "configs"} <= graph["demo.evaluate"]


# ---------------------------------------------------------------------------------------------
# The checker on planted trees
# ---------------------------------------------------------------------------------------------

def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_reports_a_planted_cycle(tmp_path):
    """Two tiny modules importing each other; then a loop through a package that uses every
    form of import (`import a.b`, a relative `from . import`, a function-level `from a import`)."""
    write(tmp_path / "two", {"a.py": "import b\n", "b.py": "from a import x\n\nx = 1\n",
                             "c.py": "import a\n"})                 # c sits on the loop, not in it
    assert import_cycles(tmp_path / "two") == [["a", "b", "a"]]
    write(tmp_path / "pkg", {
        "top.py": "import pkg.x\n",
        "pkg/__init__.py": "",
        "pkg/x.py": "from . import y\n",
        "pkg/y.py": "def f():\n    from top import thing\n    return thing\n",
        "pkg/z.py": "from .x import name\nfrom .. import elsewhere\n"})
    assert import_cycles(tmp_path / "pkg") == [["pkg.x", "pkg.y", "top", "pkg.x"]]
    write(tmp_path / "none", {"a.py": "import b\n", "b.py": "import os\n"})
    assert import_cycles(tmp_path / "none") == []


def test_checker_reports_an_arrow_against_the_layers(tmp_path):
    write(tmp_path, {"low.py": "def f():\n    import high\n", "high.py": "import low\n",
                     "side.py": "import low\n", "lib/__init__.py": "from lib import a\n",
                     "lib/a.py": "import side\n", "stray.py": "import low\n"})
    problems = layering_violations(tmp_path, [("low",), ("high", "side"), ("lib",)],
                                   imported_only_by={"side": {"high"}})
    assert problems == ["stray: a unit without a layer",
                        "lib/a.py: imports side (only ['high'] import side)",
                        "low.py: imports high (high is in a higher layer than low)"]
