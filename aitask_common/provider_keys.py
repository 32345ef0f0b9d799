"""Which vendor credentials each upstream API needs, so a provider starts with the keys it has.

Every vendor key is optional: a provider whose key for an API is unset leaves that API's models out of the
catalogue it publishes (the dispatcher and the task service then know them as unknown models), and says so
loudly at start-up. The provider contract has no "unavailable" flag (`retired` means the vendor retired the
model), so leaving them out is the honest way to publish them as unavailable.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings

from aitask.provider.v1 import provider_service_pb2 as pb
from aitask_common.logging import get_logger

log = get_logger(__name__)

# The part of `upstream_api` before the dot → the settings that must be non-empty to call it.
CREDENTIALS: dict[str, tuple[str, ...]] = {
    "openai": ("openai_api_key",),
    "ark": ("ark_api_key",),
    "visual": ("volcengine_access_key", "volcengine_secret_key"),
}


def missing_credentials(model: pb.Model, settings: BaseSettings) -> list[str]:
    """The environment variables `model`'s upstream API needs and `settings` lacks (empty: callable)."""
    family = model.upstream_api.partition(".")[0]
    needed = CREDENTIALS.get(family, ())
    return [name.upper() for name in needed if not str(getattr(settings, name, "") or "").strip()]


def available_models(catalogue: pb.DescribeCatalogueResponse, settings: BaseSettings) -> pb.DescribeCatalogueResponse:
    """`catalogue` without the models whose credentials are unset; each left out is logged as an error."""
    kept = pb.DescribeCatalogueResponse()
    kept.CopyFrom(catalogue)
    del kept.models[:]
    for model in catalogue.models:
        missing = missing_credentials(model, settings)
        if missing:
            log.error(
                "model unavailable: its vendor key is not set; left out of the published catalogue",
                provider=catalogue.provider,
                model=model.name,
                missing=missing,
            )
            continue
        kept.models.append(model)
    if not kept.models:
        log.error("no model of this provider is available: set its vendor keys", provider=catalogue.provider)
    return kept
