"""Settings: file, then MEMALIGN_* environment, then flags; bad values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from memalign_mcp.engine import read_judge_files
from memalign_mcp.errors import SettingsError
from memalign_mcp.settings import PACKAGED_CONFIG_DIR, Settings, load_settings


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


def _shipped_judges(settings: Settings) -> list[str]:
    return [spec.name for spec in read_judge_files(settings.judges_path())]


def test_the_shipped_judge_is_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the package's own config must still be read
    settings = load_settings(env={"HOME": str(tmp_path)})
    assert "helpfulness" in _shipped_judges(settings)
    assert settings.model.timeout_s == 60  # from the packaged default.toml


def test_a_user_file_changes_only_its_keys_and_keeps_the_shipped_judges(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, "[model]\ntimeout_s = 5\n"), env={})
    assert settings.model.timeout_s == 5
    assert settings.model.max_retries == 2  # the packaged default, untouched
    assert _shipped_judges(settings) == ["helpfulness"]


def test_memalign_config_is_read_and_the_flag_wins_over_it(tmp_path: Path) -> None:
    from_env = _config(tmp_path, "[model]\ntimeout_s = 7\n")
    flag = tmp_path / "flag.toml"
    flag.write_text("[model]\ntimeout_s = 9\n", encoding="utf-8")
    env = {"MEMALIGN_CONFIG": str(from_env), "HOME": str(tmp_path)}
    assert load_settings(env=env).model.timeout_s == 7
    assert load_settings(flag, env=env).model.timeout_s == 9


def test_the_xdg_config_file_is_read_when_it_exists(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert load_settings(env=env).model.timeout_s == 60
    user = tmp_path / "memalign-mcp" / "config.toml"
    user.parent.mkdir()
    user.write_text("[model]\ntimeout_s = 11\n", encoding="utf-8")
    assert load_settings(env=env).model.timeout_s == 11
    assert load_settings(env=env | {"MEMALIGN_CONFIG": str(_config(tmp_path, ""))}).model.timeout_s == 60


def test_a_named_config_file_that_is_missing_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError) as by_flag:
        load_settings(missing, env={})
    with pytest.raises(SettingsError) as by_env:
        load_settings(env={"MEMALIGN_CONFIG": str(missing)})
    assert (by_flag.value.key, by_env.value.key) == ("--config", "MEMALIGN_CONFIG")
    assert str(missing) in str(by_flag.value)
    assert str(missing) in str(by_env.value)


def test_the_example_config_in_configs_loads(tmp_path: Path) -> None:
    settings = load_settings(REPO / "configs" / "example.toml", env={})
    assert settings.model.api_base.startswith("http://127.0.0.1")
    assert _shipped_judges(settings) == ["helpfulness"]  # its judges_dir is commented out


def test_the_packaged_config_is_the_repositorys_configs_directory() -> None:
    # One copy of truth: in a checkout the package's config/ is a link to configs/, which the wheel carries.
    assert PACKAGED_CONFIG_DIR.resolve() == (REPO / "configs").resolve()


def test_the_index_cache_is_small_on_a_local_disk_and_larger_on_object_storage() -> None:
    # On object storage every index page that does not fit is read again, a request each (BENCHMARKS.md).
    local = load_settings(env={}, overrides={"store.data_dir": "/tmp/judges"}).store
    remote = load_settings(env={}, overrides={"store.data_dir": "s3://bucket/judges"}).store
    assert (local.index_cache(), remote.index_cache()) == (4, 64)
    chosen = load_settings(env={}, overrides={"store.data_dir": "s3://bucket/j", "store.index_cache_mb": 8})
    assert chosen.store.index_cache() == 8
