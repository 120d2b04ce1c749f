"""Outputs and manifests, no torch: fsspec URLs (:mod:`.storage`), atomic local writes (:mod:`.atomic`),
the result schema and exactly-once unit commits (:mod:`.results`), the output folder's driver lease
(:mod:`.lease`), and the run's selection record (:mod:`.selection_record`)."""

from rscert.store.results import KEY_COLUMNS, SCHEMA, OutputError, Store

__all__ = ["KEY_COLUMNS", "SCHEMA", "OutputError", "Store"]
