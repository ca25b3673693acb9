"""Benchmarks against a real Kafka: `make bench` (deploy/run-bench.sh) runs every bench/*.py."""
