"""Unified compute: materialization jobs (feature and embedding views), offline point-in-time
retrieval, streaming ingest."""
