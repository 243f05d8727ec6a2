"""The package's import layers hold and no module is in an import cycle, lazy imports included.

The contracts are in pyproject.toml ([tool.importlinter]); docs/DESIGN.md ("Layout") says what each
layer is. A new import that goes upwards, or a new module no layer names, fails here.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_import_contracts_are_kept() -> None:
    proc = subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache", "pyproject.toml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in proc.stdout, proc.stdout  # every one ran


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Some import cycles among the graph's modules (none when it is acyclic)."""
    imports = {m: graph.find_modules_directly_imported_by(m) - {m} for m in graph.modules}
    remaining = set(imports)
    while True:  # peel off modules that import nothing still remaining; what stays is on or behind a cycle
        leaves = {m for m in remaining if not imports[m] & remaining}
        if not leaves:
            break
        remaining -= leaves
    cycles = []
    for module in sorted(remaining):
        for imported in sorted(imports[module] & remaining):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.append([module, *back])
                break
    return cycles


def test_no_module_of_the_package_is_in_an_import_cycle() -> None:
    graph = grimp.build_graph("invoice_pipeline", cache_dir=None)  # function-level imports count too
    assert len(graph.modules) > 50  # the whole package was read
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_generic_module_names_a_source_type() -> None:
    """One folder + one registry line: outside sources/<type>/ only the registry names a built-in
    source type, so a plugin source gets everything a built-in one gets (dry-run words, upgrade SQL...)
    from what its own folder declares. A module branching on a type name fails here."""
    from invoice_pipeline.source_types import SOURCE_PACKAGES

    package = ROOT / "invoice_pipeline"
    generic = [p for p in sorted(package.rglob("*.py"))
               if p.parent.relative_to(package).parts[:1] != ("sources",) or p.parent == package / "sources"]
    assert package / "dryrun.py" in generic and package / "upgrade.py" in generic and package / "sources" / "base.py" in generic
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in generic
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if any(t in line for t in SOURCE_PACKAGES) and p != package / "source_types.py"]
    assert not found, "generic modules naming a source type:\n" + "\n".join(found)
    registry = (package / "source_types.py").read_text()
    assert all(registry.count(t) == 2 for t in SOURCE_PACKAGES)  # its line: the type and its package
