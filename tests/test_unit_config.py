"""Unit tests for indexer.config: precedence, file formats, type coercion and validation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from indexer.config import DEFAULTS, ConfigError, Settings, default_index_dir, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write(tmp_path / "vidx.toml", 'clip_s = 3.0\nsnippets = 4\nmodel = "from-file"\n')


# -- defaults and precedence ---------------------------------------------------------------

def test_defaults_without_any_source(tmp_path):
    s = load_settings(environ={})
    assert s == DEFAULTS
    assert (s.clip_s, s.snippets, s.sampling, s.model, s.pretrained) == (5.0, 3, "exact", "ViT-B-32",
                                                                          "laion2b_s34b_b79k")
    assert s.include_hidden is False


def test_config_file_overrides_defaults(cfg):
    s = load_settings(config_path=str(cfg), environ={})
    assert s.clip_s == 3.0 and s.snippets == 4 and s.model == "from-file"
    assert s.sampling == DEFAULTS.sampling  # untouched keys keep their default


def test_env_overrides_file(cfg):
    s = load_settings(config_path=str(cfg), environ={"VIDX_CLIP_S": "4.5", "VIDX_MODEL": "from-env"})
    assert s.clip_s == 4.5
    assert s.model == "from-env"
    assert s.snippets == 4  # still from the file


def test_cli_overrides_env_and_file(cfg):
    s = load_settings({"clip_s": 2.0, "model": "from-cli"}, config_path=str(cfg),
                      environ={"VIDX_CLIP_S": "4.5", "VIDX_MODEL": "from-env"})
    assert s.clip_s == 2.0
    assert s.model == "from-cli"
    assert s.snippets == 4


def test_cli_none_values_are_ignored(cfg):
    s = load_settings({"clip_s": None, "snippets": None}, config_path=str(cfg),
                      environ={"VIDX_SNIPPETS": "7"})
    assert s.clip_s == 3.0
    assert s.snippets == 7


def test_vidx_config_env_selects_file(cfg):
    s = load_settings(environ={"VIDX_CONFIG": str(cfg)})
    assert s.snippets == 4


def test_explicit_config_path_beats_vidx_config_env(tmp_path, cfg):
    other = write(tmp_path / "other.toml", "snippets = 9\n")
    s = load_settings(config_path=str(other), environ={"VIDX_CONFIG": str(cfg)})
    assert s.snippets == 9


def test_default_config_file_under_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "vidx").mkdir(parents=True)
    write(tmp_path / "xdg" / "vidx" / "config.toml", "snippets = 6\n")
    assert load_settings(environ={}).snippets == 6


def test_missing_default_config_file_is_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing-here"))
    assert load_settings(environ={}) == DEFAULTS


def test_vidx_table_in_file(tmp_path):
    p = write(tmp_path / "c.toml", '[vidx]\nclip_s = 7.5\nsampling = "keyframe"\ninclude_hidden = true\n')
    s = load_settings(config_path=str(p), environ={})
    assert (s.clip_s, s.sampling, s.include_hidden) == (7.5, "keyframe", True)


def test_dashed_keys_in_file(tmp_path):
    p = write(tmp_path / "c.toml", "clip-s = 2.5\nbatch-size = 8\n")
    s = load_settings(config_path=str(p), environ={})
    assert (s.clip_s, s.batch_size) == (2.5, 8)


def test_int_value_for_float_setting_in_file(tmp_path):
    p = write(tmp_path / "c.toml", "clip_s = 4\n")
    s = load_settings(config_path=str(p), environ={})
    assert s.clip_s == 4.0 and isinstance(s.clip_s, float)


# -- errors ---------------------------------------------------------------------------------

def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = write(tmp_path / "c.toml", "clip_s = 3.0\nclip_seconds = 4\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config_path=str(p), environ={})
    msg = str(err.value)
    assert str(p) in msg
    assert "'clip_seconds'" in msg
    assert "clip_s" in msg  # the list of known settings helps spot the typo


def test_unknown_key_in_vidx_table(tmp_path):
    p = write(tmp_path / "c.toml", "[vidx]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        load_settings(config_path=str(p), environ={})


def test_unknown_cli_key():
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        load_settings({"nope": 1}, environ={})


def test_toml_syntax_error_names_file(tmp_path):
    p = write(tmp_path / "broken.toml", "clip_s = = 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config_path=str(p), environ={})
    assert str(p) in str(err.value)


def test_explicit_missing_config_file(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_settings(config_path=str(missing), environ={})
    assert str(missing) in str(err.value)


def test_vidx_config_env_missing_file(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"VIDX_CONFIG": str(missing)})


def test_bad_type_in_env_names_variable_and_type():
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"VIDX_SNIPPETS": "three"})
    msg = str(err.value)
    assert "environment VIDX_SNIPPETS" in msg
    assert "'snippets'" in msg and "int" in msg and "'three'" in msg


def test_bad_type_in_file_names_file(tmp_path):
    p = write(tmp_path / "c.toml", 'clip_s = "long"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config_path=str(p), environ={})
    assert f"config file {p}" in str(err.value)
    assert "float" in str(err.value)


def test_bad_type_on_cli_names_option():
    with pytest.raises(ConfigError, match=r"option --batch-size: setting 'batch_size' must be int"):
        load_settings({"batch_size": "many"}, environ={})


def test_float_string_for_int_setting_in_env_is_rejected():
    with pytest.raises(ConfigError, match="VIDX_SNIPPETS"):
        load_settings(environ={"VIDX_SNIPPETS": "2.5"})


@pytest.mark.parametrize("text,expected", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_bool_from_env(text, expected):
    assert load_settings(environ={"VIDX_INCLUDE_HIDDEN": text}).include_hidden is expected


def test_bad_bool_from_env():
    with pytest.raises(ConfigError, match="VIDX_INCLUDE_HIDDEN.*must be bool"):
        load_settings(environ={"VIDX_INCLUDE_HIDDEN": "maybe"})


def test_env_numbers_are_coerced():
    s = load_settings(environ={"VIDX_CLIP_S": "2.25", "VIDX_BATCH_SIZE": "16", "VIDX_EMBED_WORKERS": "2"})
    assert s.clip_s == 2.25 and s.batch_size == 16 and s.embed_workers == 2
    assert isinstance(s.batch_size, int)


def test_unrelated_env_vars_are_ignored():
    s = load_settings(environ={"VIDX_NOT_A_SETTING": "x", "CLIP_S": "9"})
    assert s == DEFAULTS


# -- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("cli,match", [
    ({"clip_s": 0}, "clip_s must be > 0"),
    ({"clip_s": -1.0}, "clip_s must be > 0"),
    ({"min_shot_s": -0.5}, "min_shot_s >= 0"),
    ({"min_shot_s": float("inf")}, "finite"),
    ({"snippets": 0}, "snippets must be >= 1"),
    ({"sampling": "random"}, "sampling must be 'exact' or 'keyframe'"),
    ({"batch_size": 0}, "batch_size and embed_workers"),
    ({"embed_workers": 0}, "batch_size and embed_workers"),
])
def test_validation_errors(cli, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(cli, environ={})


def test_validation_applies_to_env_values():
    with pytest.raises(ConfigError, match="sampling"):
        load_settings(environ={"VIDX_SAMPLING": "sparse"})


def test_min_shot_s_longer_than_clip_s_is_valid():
    s = load_settings({"clip_s": 2.0, "min_shot_s": 3.0}, environ={})
    assert s.min_shot_s == 3.0 and s.clip_s == 2.0


def test_nan_clip_s_is_rejected():
    with pytest.raises(ConfigError):
        load_settings(environ={"VIDX_CLIP_S": "nan"})


def test_fractional_float_for_int_setting_in_file_is_rejected(tmp_path):
    p = write(tmp_path / "c.toml", "snippets = 2.5\n")
    with pytest.raises(ConfigError, match="snippets"):
        load_settings(config_path=str(p), environ={})


# -- Settings -------------------------------------------------------------------------------

def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.clip_s = 1.0  # type: ignore[misc]


def test_index_dir_default_under_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings().index_dir == str(tmp_path / "data" / "vidx" / "index")
    assert default_index_dir() == str(tmp_path / "data" / "vidx" / "index")


def test_index_dir_expands_user_and_is_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings(db="~/idx").index_dir == str(tmp_path / "idx")
    monkeypatch.chdir(tmp_path)
    assert Settings(db="rel/idx").index_dir == os.path.join(str(tmp_path), "rel", "idx")


def test_tiny_settings_fixture(tiny_settings, index_dir):
    assert tiny_settings.model == "vidx-tiny"
    assert tiny_settings.pretrained == "random"
    assert tiny_settings.clip_s == 2.0
    assert tiny_settings.index_dir == str(index_dir)


def test_shot_frames_setting():
    assert DEFAULTS.shot_frames == "reference"
    every = load_settings({"shot_frames": "all"}, environ={})
    assert every.shot_frames == "all"
    # The frames the detector sees change where cuts fall: a different clip recipe re-indexes.
    assert every.clip_recipe != DEFAULTS.clip_recipe and "ref" in DEFAULTS.clip_recipe
    assert load_settings({}, environ={"VIDX_SHOT_FRAMES": "all"}).shot_frames == "all"
    with pytest.raises(ConfigError, match="shot_frames must be 'reference' or 'all'"):
        load_settings({"shot_frames": "some"}, environ={})


def test_version_flag(capsys):
    from importlib.metadata import version

    from vidx.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vidx {version('vidx')}"


def test_long_failure_lists_are_cut_with_a_count(capsys):
    from vidx.cli import FAILURES_SHOWN, _print_failures

    failures = [{"path": f"/a/{i}.mp4", "status": "failed" if i % 5 else "skipped", "reason": "r"}
                for i in range(FAILURES_SHOWN + 7)]
    _print_failures(failures)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == FAILURES_SHOWN + 1 and lines[0] == "  skipped: /a/0.mp4: r"
    assert lines[-1] == "  ... and 7 more (5 failed, 2 skipped); 'vidx status --json' lists them all"
    _print_failures(failures[:3])
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan"])
def test_decode_timeout_must_be_a_positive_number_of_seconds(value):
    """0 does not mean "no bound": a decode stuck inside libav must still be stopped."""
    with pytest.raises(ConfigError, match="decode_timeout_s must be a number of seconds > 0"):
        load_settings(environ={"VIDX_DECODE_TIMEOUT_S": value})
    assert load_settings(environ={"VIDX_DECODE_TIMEOUT_S": "0.5"}).decode_timeout_s == 0.5


@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_checkpoint_s_is_seconds_or_zero_for_off(value):
    with pytest.raises(ConfigError, match="checkpoint_s must be a number of seconds >= 0"):
        load_settings(environ={"VIDX_CHECKPOINT_S": value})
    assert load_settings(environ={"VIDX_CHECKPOINT_S": "0"}).checkpoint_s == 0.0
    assert load_settings({"checkpoint_s": 30}, environ={}).checkpoint_s == 30.0


def test_precision_is_checked():
    from indexer.config import ConfigError, load_settings

    assert load_settings({"precision": "bf16"}, config_path=None, environ={}).precision == "bf16"
    assert load_settings({}, config_path=None, environ={"VIDX_PRECISION": "fp32"}).precision == "fp32"
    with pytest.raises(ConfigError, match="precision must be"):
        load_settings({"precision": "fp16"}, config_path=None, environ={})
