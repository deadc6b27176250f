"""Settings come from the environment, and the README documents every one of them."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_reference():
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", README))
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in documented]
    assert not missing, f"settings missing from README's configuration table: {missing}"


def test_settings_read_the_environment_and_keep_secrets_out_of_their_repr(monkeypatch):
    monkeypatch.setenv("INPUT_BUCKET", "my-input")
    monkeypatch.setenv("DEFAULT_TASK_TYPE", "clustering")
    monkeypatch.setenv("GEMINI_API_KEY", "secret-key-value-123")
    settings = Settings()
    assert settings.input_bucket == "my-input"
    assert settings.default_options().task_type == "CLUSTERING"
    assert settings.gemini_api_key.get_secret_value() == "secret-key-value-123"
    assert "secret-key-value-123" not in repr(settings) and "secret-key-value-123" not in str(settings.model_dump())
