"""The [model] settings a user tunes for a slow or limited server: timeout, retries, output token limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from memalign_mcp.errors import SettingsError
from memalign_mcp.settings import ModelSettings, load_settings

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def test_timeout_and_retries_come_from_the_environment() -> None:
    settings = load_settings(CONFIG, env={"MEMALIGN_TIMEOUT_S": "300", "MEMALIGN_MAX_RETRIES": "0"})

    assert settings.model.timeout_s == 300
    assert settings.model.max_retries == 0


def test_a_bad_timeout_in_the_environment_names_the_setting() -> None:
    with pytest.raises(SettingsError, match=r"model\.timeout_s.*'soon'"):
        load_settings(CONFIG, env={"MEMALIGN_TIMEOUT_S": "soon"})


def test_the_shipped_config_states_the_default_token_limits() -> None:
    shipped = load_settings(CONFIG, env={}).model

    assert shipped.max_tokens_by_reply() == ModelSettings().max_tokens_by_reply()
    assert set(shipped.max_tokens_by_reply()) == {
        "judgement",
        "guidelines",
        "consolidated_guidelines",
        "rederived_guideline",
    }


def test_a_token_limit_too_small_for_any_json_reply_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"model\.max_tokens_score"):
        load_settings(CONFIG, env={}, overrides={"model.max_tokens_score": 1})
