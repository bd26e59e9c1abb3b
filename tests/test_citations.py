"""Citations in the repository's text point inside the repository, and exist.

Every .py and .md file (hidden folders, __pycache__, runs/ and *.tmp skipped) is scanned whole,
so docstrings, comments and strings all count:

(a) a repo path (a token such as `svd/unet.py`, `tests/data/map_*.tsv` or `docs/method.md`
    whose first component is a top-level file or folder of the repository) names a file or
    folder that exists (`*` and `{a,b}` are expanded); URLs, absolute paths
    (`/shared/jobs.jsonl`) and run outputs (`runs/...`) are not repo paths;
(b) nothing cites the design documents that lived outside the repository: `docs/method.md`
    and `docs/svd.md` replace them, and the key tables are in `tests/data/`;
(c) a section citation `docs/<name>.md §N` (also `§N.M`, ranges `§N-§M`, lists `§N, §M`, and
    quirk items `§7 #3, #5`) names a numbered heading of that document, and each `#n` an item
    of the numbered list in that section; inside docs/*.md a bare `§N` refers to the same
    document and is checked the same way.

Each failure lists every bad citation as file:line.
"""

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {"__pycache__", "runs"}

# (b) The documents that lived outside the repository; the patterns are split so that this
# file does not match itself.
OUTSIDE = [
    re.compile("shared" + r"/(?:docs|svd-" + r"keys)\b"),
    re.compile(r"\bsvd-" + r"keys\b"),
    re.compile(r"\b(?:i2vedit-reference|anchors|style)" + r"\.md\b"),
    re.compile(r"(?<![\w/.-])(?:i2vedit|svd)" + r"\.md\b"),         # bare, not docs/svd.md
    re.compile(r"\bstyle " + r"(?:rule|decision)s?\b"),
]

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
# (a) One path component: word characters, '-', '*' and {a,b} alternatives; dots only between
# them, so a full stop or a ':98' after a path is not part of it.
_CHUNK = r"(?:[\w*-]|\{[\w.*-]+(?:,[\w.*-]+)+\})+"
_PART = rf"{_CHUNK}(?:\.{_CHUNK})*"
PATH = re.compile(rf"(?<![\w./~$<>{{}}-])({_PART}(?:/{_PART})+)")
# (c) A section, optionally with list items, and a chain of them.
_SECTION = r"§\d+(?:\.\d+)*(?:\s*#\d+(?:\s*,\s*#\d+)*)?"
_JOIN = r"\s*(?:,|-|–|\band\b|\bor\b|\bto\b)?\s*"
DOC_CITATION = re.compile(rf"(?<![\w/.-])docs/([\w-]+)\.md((?:{_JOIN}{_SECTION})*)")
BARE_SECTIONS = re.compile(rf"(?<![\w/.])({_SECTION}(?:{_JOIN}{_SECTION})*)")
ONE_SECTION = re.compile(r"§(\d+(?:\.\d+)*)((?:\s*,?\s*#\d+)*)")
HEADING = re.compile(r"^#{1,6}[ \t]+(\d+(?:\.\d+)*)\.?[ \t]", re.MULTILINE)
LIST_ITEM = re.compile(r"^[ \t]*(\d+)\.[ \t]", re.MULTILINE)


def text_files() -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        files += [Path(folder) / n for n in sorted(names)
                  if n.endswith((".py", ".md")) and not n.endswith(".tmp")]
    return files


def top_level() -> set[str]:
    return {p.name for p in ROOT.iterdir()
            if not p.name.startswith(".") and p.name not in SKIPPED_DIRS}


def expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [p for alt in match.group(1).split(",") for p in expand_braces(head + alt + tail)]


def exists(token: str) -> bool:
    """Every alternative of `token` names something (a glob: at least one match)."""
    return all(any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists()
               for p in expand_braces(token))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@functools.cache
def sections(name: str) -> dict[str, str] | None:
    """docs/<name>.md as {'N.M': the text up to the next heading}; None if there is no file."""
    doc = ROOT / "docs" / f"{name}.md"
    if not doc.is_file():
        return None
    text = doc.read_text(encoding="utf-8")
    heads = list(HEADING.finditer(text))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return {h.group(1): text[h.end():end] for h, end in zip(heads, ends)}


def check_sections(where: str, name: str, cited: str) -> list[str]:
    """What is wrong with the sections `cited` (e.g. '§1.1, §2.1' or '§7 #3, #5') of
    the document `name` in docs/."""
    doc = sections(name)
    if doc is None:
        return [f"{where}: docs/{name}.md does not exist"]
    bad = []
    for m in ONE_SECTION.finditer(cited):
        number, items = m.group(1), re.findall(r"\d+", m.group(2))
        if number not in doc:
            bad.append(f"{where}: docs/{name}.md has no section {number} (cited as §{number})")
            continue
        # The items of a section: its numbered list, subsections included.
        body = "".join(t for n, t in doc.items() if n == number or n.startswith(number + "."))
        listed = set(LIST_ITEM.findall(body))
        bad += [f"{where}: docs/{name}.md §{number} has no item #{item}"
                for item in items if item not in listed]
    return bad


@dataclass
class Scan:
    missing: list[str] = field(default_factory=list)      # (a)
    outside: list[str] = field(default_factory=list)      # (b)
    sections: list[str] = field(default_factory=list)     # (c)
    paths_checked: int = 0
    sections_checked: int = 0


@functools.cache
def scan() -> Scan:
    tops, result = top_level(), Scan()
    for path in text_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        for pattern in OUTSIDE:
            result.outside += [f"{rel}:{line_of(text, m.start())}: cites '{m.group(0)}'"
                               for m in pattern.finditer(text)]
        plain = URL.sub(lambda m: " " * len(m.group(0)), text)     # offsets kept
        for m in PATH.finditer(plain):
            token = m.group(1)
            if token.split("/")[0] in tops:
                result.paths_checked += 1
                if not exists(token):
                    result.missing.append(f"{rel}:{line_of(text, m.start())}: '{token}'")
        cited = []
        for m in DOC_CITATION.finditer(plain):
            cited.append(m.span())
            if m.group(2):
                result.sections_checked += 1
                result.sections += check_sections(f"{rel}:{line_of(text, m.start())}",
                                                  m.group(1), m.group(2))
        if rel.startswith("docs/"):                               # a bare § is this document
            for m in BARE_SECTIONS.finditer(plain):
                if not any(a <= m.start() < b for a, b in cited):
                    result.sections_checked += 1
                    result.sections += check_sections(f"{rel}:{line_of(text, m.start())}",
                                                      path.stem, m.group(1))
    return result


def test_cited_repo_paths_exist():
    missing = scan().missing
    assert not missing, "cited repo paths that do not exist:\n" + "\n".join(missing)


def test_nothing_cites_documents_outside_the_repository():
    outside = scan().outside
    assert not outside, ("citations of documents outside the repository (cite docs/method.md, "
                         "docs/svd.md or tests/data/ instead):\n" + "\n".join(outside))


def test_cited_sections_exist():
    bad = scan().sections
    assert not bad, "citations of sections or items that do not exist:\n" + "\n".join(bad)


def test_the_scanner_sees_what_it_must():
    # The scan found the citations there are (a broken pattern would find none and pass).
    assert scan().paths_checked > 100 and scan().sections_checked > 50
    # The patterns, on text planted here (the repository is not touched).
    assert PATH.search("see svd/unet.py:98.").group(1) == "svd/unet.py"
    assert PATH.search("python batch.py --jobs /shared/jobs.jsonl --out-dir ~/out") is None
    assert PATH.search("<run>/lora/clip0.safetensors and f'docs/{name}.md'") is None
    assert [m.group(1) for m in PATH.finditer("(tests/data/map_*.tsv, bench/NOTES.md)")] == [
        "tests/data/map_*.tsv", "bench/NOTES.md"]
    assert exists("tests/data/map_*.tsv") and exists("tests/data/diffusers_{unet,vae}.tsv")
    assert not exists("tests/" + "test_parity.py")
    assert not exists("tests/data/" + "{map,nope}_*.tsv")
    m = DOC_CITATION.search("(docs/svd.md §1.1, §2.1 and §7 #3, #5).")
    assert m.group(1) == "svd" and ONE_SECTION.findall(m.group(2)) == [
        ("1.1", ""), ("2.1", ""), ("7", " #3, #5")]
    assert ONE_SECTION.findall(DOC_CITATION.search("docs/method.md\n§4-§6):").group(2)) == [
        ("4", ""), ("6", "")]
    assert not check_sections("x", "svd", "§5.2, §7 #1")
    assert check_sections("x", "svd", "§99") and check_sections("x", "svd", "§7 #999")
    assert check_sections("x", "no-such-document", "§1")
    assert any(p.search("see " + "shared/" + "docs/svd.md §5") for p in OUTSIDE)
    assert any(p.search("(i2vedit" + ".md §4)") for p in OUTSIDE)
    assert not any(p.search("see docs/svd.md §5 and docs/method.md §3") for p in OUTSIDE)
