"""The source systems, one package each; their registry is invoice_pipeline/source_types.py."""

from invoice_pipeline.source_types import (SOURCE_PACKAGES, default_port, demo_source_name, known_types,
                                           simulator_class, source_class, source_packages)

__all__ = ["SOURCE_PACKAGES", "default_port", "demo_source_name", "known_types", "simulator_class", "source_class",
           "source_packages"]
