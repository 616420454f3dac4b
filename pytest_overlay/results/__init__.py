"""Results: the record each measurement makes (records), the metrics a record can be of
(metrics), where records are kept (storage), and what judges them (thresholds, gates).

The record's own names are handed on here: a record is what every other layer passes on.
"""

from .records import (
                      SCHEMA,
                      SCHEMA_VERSION,
                      UNKNOWN_OVERHEAD,
                      Missing,
                      Record,
                      Stats,
                      baseline,
                      difference,
                      document,
                      dumps,
                      finite,
                      percentile,
                      ratio,
                      run_metadata,
                      write_atomic,
                      write_json,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "UNKNOWN_OVERHEAD", "Missing", "Record", "Stats", "baseline", "difference",
           "document", "dumps", "finite", "percentile", "ratio", "run_metadata", "write_atomic", "write_json"]
