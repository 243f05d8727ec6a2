"""Benchmarks of issue 10 (`python -m benchmarks`): measurements, never assertions. See README.md."""
