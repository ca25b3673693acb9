"""Contracts and plumbing shared by every Loopline service: schemas, topics, spec, Kafka helpers."""
