"""Ingest: HTTP and direct-Kafka data collection, validated against the pipeline spec."""
