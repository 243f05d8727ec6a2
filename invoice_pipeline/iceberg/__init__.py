"""The Apache Iceberg warehouse backend (`warehouse.backend: iceberg`, docs/ICEBERG.md).

Source runs reuse the extraction and batch preparation of the DuckDB backend and commit each batch
to Iceberg tables through pyiceberg's optimistic commits: many processes on many machines write at
once, a conflict is retried after re-reading, never avoided by a lock. Writers commit to the branch
INGEST; publish.py audits it and fast-forwards `main` (what every reader sees) only when the checks pass.
"""
