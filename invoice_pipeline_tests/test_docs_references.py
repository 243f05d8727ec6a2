"""Code, tests and docs point only at files inside the repository.

The product spec and the stack notes the project started from live outside the repository, so a
comment saying "see SPEC section 3" or "FACTS.md" leaves the next engineer with nothing to read: what
the code relies on is copied into docs/ (docs/DESIGN.md "Stack facts the code relies on",
docs/DATA_DICTIONARY.md, docs/SOURCES.md) and comments point there. And every docs/*.md or
benchmarks/*.md a file names must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml"}

OUTSIDE = re.compile(
    "|".join([
        r"\bSPEC\b",  # "SPEC section 3", "SPEC 2.1", "SPEC.md", "SPEC's table"
        r"FACTS\.md",
        r"\.\./shared\b",  # the folder next to the repository
        r"/work/shared\b",
        r"\bapi-docs\b",  # the vendor documents' folder there (the copies in the repo: fixtures/api_docs)
    ])
)
DOC_PATH = re.compile(r"\b((?:docs|benchmarks)/[A-Za-z0-9_]+\.md)\b")


def repository_files() -> list[Path]:
    roots = [ROOT / "invoice_pipeline", ROOT / "invoice_pipeline_tests", ROOT / "scripts", ROOT / "benchmarks",
             ROOT / "docs", ROOT / "deploy"]
    files = [p for r in roots if r.is_dir() for p in r.rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    files += [p for p in (ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "workspace.yaml") if p.is_file()]
    this = Path(__file__).resolve()
    return sorted(p for p in files if "__pycache__" not in p.parts and "fixtures" not in p.parts and p != this)


def test_the_scan_sees_code_tests_and_docs() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in repository_files()}
    assert {"invoice_pipeline/pipeline.py", "invoice_pipeline_tests/conftest.py", "docs/DESIGN.md", "README.md",
            "benchmarks/RESULTS.md"} <= names


def test_nothing_points_at_files_outside_the_repository() -> None:
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in repository_files()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if OUTSIDE.search(line)]
    assert not found, ("these point at files outside the repository; copy what the code relies on into docs/ "
                       "and point there:\n" + "\n".join(found))


def test_the_docs_that_files_name_exist() -> None:
    missing = [f"{path.relative_to(ROOT)}: {m}"
               for path in repository_files()
               for m in sorted(set(DOC_PATH.findall(path.read_text(encoding="utf-8"))))
               if not (ROOT / m).is_file()]
    assert not missing, "these name a doc that does not exist:\n" + "\n".join(missing)
