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
