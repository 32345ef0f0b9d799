"""Simulator settings, read from ``SIMULATOR_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from upstream_simulator.faults import FaultSpec, check_endpoint


class SimulatorSettings(BaseSettings):
    """Configuration of the upstream simulator.

    ``faults`` maps an endpoint name (or ``*``) to a partial fault config, e.g.
    ``SIMULATOR_FAULTS='{"*": {"latency_s": 0.05}, "ark.images": {"error_rate": 0.1}}'``.
    """

    model_config = SettingsConfigDict(env_prefix="SIMULATOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=9100, ge=0, le=65535)  # 0 picks a free port (tests)
    public_url: str | None = None  # base of returned media URLs; default http://HOST:PORT
    ark_api_key: str = "sim-ark-key"
    volc_access_key: str = "sim-ak"
    volc_secret_key: str = "sim-sk"
    openai_api_key: str = "sim-openai-key"
    video_seconds: float = Field(default=5.0, ge=0)
    faults: dict[str, FaultSpec] = Field(default_factory=dict)

    @field_validator("faults")
    @classmethod
    def _known_endpoints(cls, value: dict[str, FaultSpec]) -> dict[str, FaultSpec]:
        for name in value:
            check_endpoint(name)
        return value

    def public_base(self, bound_port: int) -> str:
        """The base URL for media links, given the port actually bound."""
        if self.public_url:
            return self.public_url.rstrip("/")
        # A wildcard bind address is not something a client can connect to.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{bound_port}"
