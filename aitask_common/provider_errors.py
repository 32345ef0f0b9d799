"""What a provider's error means to its callers: which codes may be retried, and the trailing
metadata that carries the upstream's Retry-After and marks an error as the upstream's own.

Kept apart from `aitask_common.provider` (the provider server runtime) so a caller, such as the
dispatcher or a client, imports these names without the server, its SDKs or Redis.
"""

from __future__ import annotations

import grpc

# Trailing metadata key carrying an upstream's Retry-After, in milliseconds.
RETRY_AFTER_METADATA = "retry-after-ms"
# Set on every error that came from the upstream, so the dispatcher can tell an
# upstream's UNAVAILABLE (retry later) from a dead instance (fail over now).
UPSTREAM_ERROR_METADATA = "aitask-upstream-error"

# Which gRPC codes the dispatcher may retry (DESIGN.md: everything else is final).
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
