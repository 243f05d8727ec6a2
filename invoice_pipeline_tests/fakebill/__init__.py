"""Fakebill: a minimal source system living outside invoice_pipeline/sources/, registered as a plugin.

It proves that a new source is one folder plus one registry line (docs/SOURCE_GUIDE.md): this
package (client, mapping, simulator) plus one entry point `fakebill = "invoice_pipeline_tests.fakebill"`
in the group `invoice_pipeline.source_types` (test_source_plugin.py writes that line into a
dist-info folder, as `pip install` of a package declaring it would). Nothing else in the
repository names it.
"""

from invoice_pipeline_tests.fakebill.client import FakebillSource

SOURCE_CLASS = FakebillSource
