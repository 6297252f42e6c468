"""The `rtchunk` entry point: command dispatch, presets, and the persistent compilation cache it turns on."""

from __future__ import annotations

import jax
import pytest

from rtchunk import cli


@pytest.fixture
def restore_cache_dir():
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_commands_turn_on_a_persistent_compilation_cache(monkeypatch, tmp_path, restore_cache_dir, capsys):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("RTCHUNK_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["levels", "list"]) == 0
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    assert "h17_unicycle" in capsys.readouterr().out  # `rtchunk levels list`, as documented


def test_an_explicit_jax_setting_wins(monkeypatch, tmp_path, restore_cache_dir):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("RTCHUNK_CACHE_DIR", str(tmp_path / "other"))
    cli.main(["levels", "list"])
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("RTCHUNK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.default_cache_dir() == tmp_path / "rtchunk" / "jax"


def test_unknown_command_and_preset(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli.main(["eval", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_levels_subcommands_have_their_documented_names(capsys):
    assert cli.main(["levels", "show", "--levels", "l/h17_unicycle"]) == 0
    assert "h17_unicycle" in capsys.readouterr().out
