"""The source systems, one package each; their registry is invoice_pipeline/source_types.py."""

from invoice_pipeline.source_types import SOURCE_PACKAGES, known_types, simulator_class, source_class

__all__ = ["SOURCE_PACKAGES", "known_types", "simulator_class", "source_class"]
