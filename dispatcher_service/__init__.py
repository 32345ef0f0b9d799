"""RQ workers that run tasks: load, lease, call a provider over gRPC, write the outcome."""
