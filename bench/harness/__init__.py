"""The `make bench` harness: starts the stack on free loopback ports, drives it with wrk and ghz,
measures floors in the same run, and writes bench/results/latest.json (see bench/README.md)."""
