"""Shared runtime for every aitask service: settings, logging, gRPC bootstrap, queues, registry, task model."""
