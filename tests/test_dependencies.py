"""The packages depend one way (README, "Tour"): edm/ knows nothing of ours; attention/ and lora/
know nothing of each other, svd/ or edm/; svd/ uses edm/ only in sampling.py, where SVD becomes
an EDM denoiser. The entry points (edit.py, train.py) and demo/, bench/ sit on top; batch.py
(many edit.py jobs under torchrun) sits on edit.py, and nothing imports it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"svd", "edm", "attention", "lora", "edit", "train", "batch", "demo", "bench", "tests"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of our packages and modules that `path` imports (anywhere in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


def test_library_packages_import_one_way():
    allowed = {"edm": {"edm"}, "attention": {"attention"}, "lora": {"lora"},
               "svd": {"svd", "edm"}}
    found = {}
    for package, ok in allowed.items():
        for path in sorted((ROOT / package).glob("*.py")):
            extra = imported_packages(path) - ok
            if extra:
                found[str(path.relative_to(ROOT))] = sorted(extra)
    assert not found, f"imports against the one-way rule: {found}"
    users_of_edm = [p.name for p in sorted((ROOT / "svd").glob("*.py"))
                    if "edm" in imported_packages(p)]
    assert users_of_edm == ["sampling.py"]


def test_batch_runner_sits_on_top():
    assert imported_packages(ROOT / "batch.py") <= {"edit", "svd", "lora"}
    ours = sorted(ROOT.glob("*.py")) + [
        p for d in sorted(OURS) for p in sorted((ROOT / d).rglob("*.py"))]
    importers = [str(p.relative_to(ROOT)) for p in ours
                 if p.name != "batch.py" and "batch" in imported_packages(p)]
    assert importers == ["tests/test_batch.py"]                        # tests only
