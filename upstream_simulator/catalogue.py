"""The vendors' model catalogue (``catalogue.toml``): which models they serve, and which they retired."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_PATH = Path(__file__).with_name("catalogue.toml")
Status = Literal["served", "retired", "unknown"]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model id of one vendor API."""

    name: str
    vendor: str
    api: str
    family: str
    shutdown: dt.date | None = None
    successor: str | None = None
    grace: bool = False


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the catalogue says about a requested model id."""

    status: Status
    entry: ModelEntry | None


class Catalogue:
    """Model ids per (vendor, api); ``ep-…`` ids on Ark take the api's endpoint family."""

    def __init__(self, entries: list[ModelEntry], endpoints: dict[str, str], *, retired_grace: bool = True) -> None:
        self._entries = {(e.vendor, e.api, e.name): e for e in entries}
        self._endpoints = endpoints
        self.retired_grace = retired_grace

    @classmethod
    def load(cls, path: Path | None = None, *, retired_grace: bool = True) -> Catalogue:
        """Read a catalogue file (the packaged one by default)."""
        data = tomllib.loads((path or DEFAULT_PATH).read_text(encoding="utf-8"))
        entries = []
        for vendor in ("openai", "ark", "visual"):
            for block in data.get(vendor, {}).get("models", []):
                for name in block["names"]:
                    entries.append(
                        ModelEntry(
                            name=name,
                            vendor=vendor,
                            api=block["api"],
                            family=block["family"],
                            shutdown=block.get("shutdown"),
                            successor=block.get("successor"),
                            grace=bool(block.get("grace", False)),
                        )
                    )
        endpoints = dict(data.get("ark", {}).get("endpoints", {}))
        return cls(entries, endpoints, retired_grace=retired_grace)

    def lookup(self, vendor: str, api: str, name: str, today: dt.date | None = None) -> Lookup:
        """Whether ``name`` is served on ``vendor``'s ``api`` today, retired, or unknown."""
        entry = self._entries.get((vendor, api, name))
        if entry is None:
            if vendor == "ark" and name.startswith("ep-") and api in self._endpoints:
                return Lookup("served", ModelEntry(name, vendor, api, self._endpoints[api]))
            return Lookup("unknown", None)
        today = today or dt.datetime.now(dt.UTC).date()
        if entry.shutdown is not None and entry.shutdown <= today and not (entry.grace and self.retired_grace):
            return Lookup("retired", entry)
        return Lookup("served", entry)

    def names(self, vendor: str, api: str) -> list[str]:
        """Every listed id of ``vendor``'s ``api`` (served or not)."""
        return [name for (v, a, name) in self._entries if v == vendor and a == api]
