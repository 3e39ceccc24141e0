"""Data: the built-in demo catalog, ingest (the data contract), dataset artifacts, real-data adapters."""
