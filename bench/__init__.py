"""Benchmarks of the aitask stack: `python -m bench.harness` (what `make bench` runs)."""
