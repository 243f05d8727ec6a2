"""Simulators for the benchmarks: pages rendered once to disk, and an Oracle simulator that answers
detail calls from that file (an index of offsets), so the server is never what a benchmark measures.

The built-in Oracle simulator renders a detail payload in ~1.6 ms of Python; 10,000 of them would cost
the server 16 CPU-s, more than the whole pipeline. Here each detail is a `pread` of prepared bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from invoice_pipeline.simulation import Knobs, SimRequest, SimResponse
from invoice_pipeline.sources.oracle_occ.simulator import OracleOccSimulator

FIXED_NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # same data set in every process
SEED = 42


def pages_path(out: Path, size: int) -> Path:
    return out / f"oracle_details_{size}.jsonl"


def _render_part(size: int, part: int, parts: int, path: Path) -> None:
    """Write the detail payloads of every parts-th invoice (one JSON document per line)."""
    sim = OracleOccSimulator(size=size, knobs=Knobs(seed=SEED), now=FIXED_NOW)
    try:
        ids = sorted(sim._invoices)
        with path.open("wb") as f:
            for i in ids[part::parts]:
                f.write(orjson.dumps(sim._detail(sim._invoices[i])) + b"\n")
    finally:
        sim.stop()


def ensure_pages(out: Path, size: int, parts: int = 2) -> Path:
    """Oracle detail payloads of `size` invoices as JSONL (rendered once, in `parts` processes)."""
    path = pages_path(out, size)
    if path.exists() and path.with_suffix(".idx.json").exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    tmp = [path.with_suffix(f".part{p}") for p in range(parts)]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.sims", "render", str(size), str(p), str(parts), str(tmp[p])])
             for p in range(parts)]
    if any(proc.wait() for proc in procs):
        raise RuntimeError("rendering pages failed")
    readers = [t.open("rb") for t in tmp]
    index: dict[str, list[int]] = {}
    offset = 0
    with path.open("wb") as f:
        live = list(readers)
        while live:  # interleave the parts back into id order
            for r in list(live):
                line = r.readline()
                if not line:
                    live.remove(r)
                    continue
                key = orjson.loads(line)["CustomerTransactionId"]
                index[key] = [offset, len(line) - 1]
                f.write(line)
                offset += len(line)
    for r, t in zip(readers, tmp, strict=True):
        r.close()
        t.unlink()
    path.with_suffix(".idx.json").write_text(json.dumps(index))
    return path


class IndexedOracleSimulator(OracleOccSimulator):
    """The Oracle simulator (login, tokens, list, faults) whose detail answers come from the pages file."""

    def __init__(self, size: int, pages: Path, knobs: Knobs | None = None, port: int = 0):
        super().__init__(size=size, knobs=knobs or Knobs(seed=SEED), port=port, now=FIXED_NOW)
        self._index = {k: tuple(v) for k, v in json.loads(pages.with_suffix(".idx.json").read_text()).items()}
        self._fd = os.open(pages, os.O_RDONLY)
        self._list_cache: dict[str, SimResponse] = {}
        self._list_lock = threading.Lock()

    def _get(self, request: SimRequest, identifier: str) -> SimResponse:
        where = self._index.get(identifier)
        if where is None or request.param("identifier-type") not in (None, "CustomerTransactionId"):
            return super()._get(request, identifier)
        offset, length = where
        return SimResponse(200, os.pread(self._fd, length, offset))

    def _list(self, request: SimRequest) -> SimResponse:
        # List pages are answered once per distinct query string and then from memory.
        with self._list_lock:
            hit = self._list_cache.get(request.raw_query)
        if hit is not None:
            return hit
        response = super()._list(request)
        if response.status == 200:
            response = SimResponse(200, orjson.dumps(response.body))
            with self._list_lock:
                self._list_cache[request.raw_query] = response
        return response

    def stop(self) -> None:
        super().stop()
        os.close(self._fd)


def serve(kind: str, size: int, latency: float, pages: str | None) -> None:
    """Child process: start one simulator, print its source config as one JSON line, serve until stdin closes."""
    knobs = Knobs(latency=latency, seed=SEED)
    if kind == "oracle_indexed":
        sim: Any = IndexedOracleSimulator(size, Path(pages or ""), knobs)
    else:
        from invoice_pipeline.sources import simulator_class

        sim = simulator_class(kind)(size=size, knobs=knobs)
    sim.start()
    print(json.dumps(sim.source_config()), flush=True)
    try:
        sys.stdin.read()
    finally:
        sim.stop()


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "render":
        _render_part(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    elif cmd == "serve":
        serve(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
