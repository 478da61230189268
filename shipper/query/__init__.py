"""SQL over the archive: the DuckDB engine, the Parquet query copy of each segment, compaction of
those copies, and the set of live copies."""
