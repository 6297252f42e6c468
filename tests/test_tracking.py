"""--wandb-project: statistics rows mirrored to a (fake) wandb module; nothing happens without a project."""

from __future__ import annotations

import sys
import types

import pytest

from rtchunk.kinetix.tracking import Tracker


class FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.logged = []
        self.finished = False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    module = types.SimpleNamespace(init=lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_rows_are_logged_per_level_and_seed(fake_wandb, tmp_path):
    tracker = Tracker("proj", run_name="experts /tmp/x", config={"a": 1}, step_key="env_steps",
                      group_keys=("level", "seed"), directory=tmp_path)
    tracker.log([{"update": 5, "env_steps": 8192, "level": "h17", "seed": 0, "solve_rate": 0.5},
                 {"update": 5, "env_steps": 8192, "level": "h17", "seed": 1, "solve_rate": 1.0}])
    tracker.finish()
    (run,) = fake_wandb
    assert run.init["project"] == "proj" and run.init["resume"] == "allow" and run.init["config"] == {"a": 1}
    assert run.logged == [(8192, {"h17/seed_0/update": 5, "h17/seed_0/solve_rate": 0.5,
                                  "h17/seed_1/update": 5, "h17/seed_1/solve_rate": 1.0})]
    assert run.finished


def test_no_project_means_no_wandb(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail
    tracker = Tracker(None, run_name="x", config={}, step_key="epoch")
    tracker.log([{"epoch": 0, "level": "a", "loss": 1.0}])
    tracker.finish()
    assert not tracker.active


def test_missing_wandb_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match=r"rtchunk\[wandb\]"):
        Tracker("proj", run_name="x", config={}, step_key="epoch")
