"""The OpenAI-compatible door: OpenAI's own HTTP shapes, served as aitask tasks over the task service's gRPC API."""
