"""The benchmarks, each run as a module: `python -m bench.ingest`, `python -m bench.features` (a package),
`python -m bench.busy_window` (no Kafka). `make bench` (deploy/run-bench.sh) runs them all against a
throwaway broker; bench/common.py holds what they share."""
