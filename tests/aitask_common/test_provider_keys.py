"""A provider starts with the vendor keys it has: models whose key is unset leave its published catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitask_common.provider import load_catalogue
from aitask_common.provider_keys import CREDENTIALS, available_models, missing_credentials
from provider_openai.settings import OpenAISettings
from provider_volcengine.settings import VolcengineSettings

ROOT = Path(__file__).resolve().parents[2]
VOLCENGINE = load_catalogue(ROOT / "provider_volcengine" / "catalogue.toml")
OPENAI = load_catalogue(ROOT / "provider_openai" / "catalogue.toml")


def test_every_upstream_api_of_the_catalogues_names_its_credentials() -> None:
    for catalogue, settings_class in ((VOLCENGINE, VolcengineSettings), (OPENAI, OpenAISettings)):
        for model in catalogue.models:
            family = model.upstream_api.partition(".")[0]
            assert family in CREDENTIALS, model.name
            assert set(CREDENTIALS[family]) <= set(settings_class.model_fields), model.name


def test_only_the_models_of_a_missing_key_are_left_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    settings = VolcengineSettings(ark_api_key="ark", volcengine_access_key="", volcengine_secret_key="sk")
    kept = available_models(VOLCENGINE, settings)
    assert kept.provider == VOLCENGINE.provider
    ark = {model.name for model in VOLCENGINE.models if model.upstream_api.startswith("ark.")}
    visual = {model.name for model in VOLCENGINE.models if model.upstream_api.startswith("visual.")}
    assert ark and visual
    assert {model.name for model in kept.models} == ark
    visual_model = next(model for model in VOLCENGINE.models if model.name in visual)
    assert missing_credentials(visual_model, settings) == ["VOLCENGINE_ACCESS_KEY"]


def test_a_provider_without_any_key_publishes_an_empty_catalogue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert list(available_models(OPENAI, OpenAISettings(openai_api_key="  ")).models) == []
    assert len(available_models(OPENAI, OpenAISettings(openai_api_key="sk")).models) == len(OPENAI.models)
