"""Envoy gateway: REST↔gRPC transcoding of aitask.v1 from the generated descriptor set."""
