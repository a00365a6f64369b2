"""Settings: file, then MEMALIGN_* environment, then flags; bad values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from memalign_mcp.errors import SettingsError
from memalign_mcp.settings import load_settings


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    config = _config(tmp_path, '[model]\njudge = "openai/from-file"\n[store]\ndata_dir = "/from/file"\n')
    env = {"MEMALIGN_MODEL": "openai/from-env", "MEMALIGN_DATA_DIR": "/from/env"}
    settings = load_settings(config, env=env, overrides={"store.data_dir": "/from/flag"})
    assert settings.model.judge == "openai/from-env"
    assert settings.store.data_dir == "/from/flag"
    assert settings.model.reflection_model == "openai/from-env"  # reflection defaults to the judge model


def test_no_model_means_the_memory_judge_and_no_reflection(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, ""), env={})
    assert settings.model.default_judge_model == "memory"
    assert settings.model.reflection_model is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[memory]\nguideline_cap = 0\n", "memory.guideline_cap"),
        ('[embedding]\nembed_fields = "outputs"\n', "embedding.embed_fields"),
        ("[memory]\nunknown_knob = 1\n", "memory.unknown_knob"),
        ('[server]\nport = "eighty"\n', "server.port"),
    ],
)
def test_a_bad_setting_names_its_key_and_value(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_config(tmp_path, text), env={})
    assert caught.value.key == key
    assert key in str(caught.value)


def test_relative_judges_dir_resolves_against_the_config_file(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, '[server]\njudges_dir = "judges"\n'), env={})
    assert settings.judges_path() == tmp_path / "judges"
