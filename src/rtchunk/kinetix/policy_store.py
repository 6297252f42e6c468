"""Finding and loading trained flow policies: the one lookup behind every command that takes a policy
directory (eval, live, train-policy --init-from, serve).

A policy directory is a checkpoint (``rtchunk.checkpoints.save_policy``) used for every level, a
directory with one checkpoint per level name, or a ``rtchunk train-policy`` run (``<dir>/<level>/epoch_XXX``,
of which the last epoch is taken unless one is asked for). Finding and describing a checkpoint imports
neither JAX nor Kinetix; only ``load_policy`` builds the network (Flax).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtchunk.checkpoints import META, CheckpointError, load_arrays, load_meta
from rtchunk.files import read_json
from rtchunk.model_config import ModelConfig

HOW_TO_TRAIN = ("train one with `rtchunk demo` (the whole pipeline, about 13 min on a laptop CPU) or "
                "`rtchunk train-policy`, or point the policy directory at a checkpoint")


class NoCheckpoint(CheckpointError):
    """There is no checkpoint where one was looked for."""


class AmbiguousLevel(ValueError):
    """A policy directory holds several levels' policies and none was chosen."""


def epoch_dir(run_dir: Path, level: str, epoch: int) -> Path:
    """Where ``rtchunk train-policy`` writes a level's checkpoint of one epoch."""
    return Path(run_dir) / level / f"epoch_{epoch:03d}"


def last_epoch(run_dir: Path, level: str) -> int | None:
    """The last finished epoch of a level in a ``rtchunk train-policy`` run (None: none finished)."""
    epochs = sorted(int(p.name.split("_")[1]) for p in (Path(run_dir) / level).glob("epoch_*")
                    if p.name.split("_")[1].isdigit() and (p / META).is_file())
    return epochs[-1] if epochs else None


def _last_epoch_in(directory: Path) -> Path | None:
    """The last epoch checkpoint directly inside ``directory`` (one level of a train-policy run), if any."""
    epochs = sorted((int(p.name.split("_")[1]), p) for p in directory.glob("epoch_*")
                    if p.name.split("_")[1].isdigit() and (p / META).is_file())
    return epochs[-1][1] if epochs else None


def _levels_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()
                  if p.is_dir() and ((p / META).is_file() or any(p.glob(f"epoch_*/{META}"))))


def find_checkpoint(directory: Path, level: str | None = None, epoch: int | None = None) -> Path:
    """The checkpoint directory for ``level`` in a policy directory (see the module docstring). Without a
    level, a directory holding one level's policies gives that level's. Raises ``NoCheckpoint`` (a
    ``ValueError``) naming where it looked."""
    directory = Path(directory)
    if not directory.exists():
        raise NoCheckpoint(f"no trained policy at {directory}: {HOW_TO_TRAIN}")
    if epoch is None and (directory / META).is_file():
        return directory
    if epoch is None and level is None and directory.is_dir() and (last := _last_epoch_in(directory)) is not None:
        return last  # one level's directory of a train-policy run
    if level is None:
        names = _levels_in(directory) if directory.is_dir() else []
        if len(names) != 1:
            if not names:
                raise NoCheckpoint(f"no trained policy in {directory} (no <level>/epoch_*/{META}): {HOW_TO_TRAIN}")
            raise AmbiguousLevel(f"{directory} holds policies for several levels ({', '.join(names)}): choose one "
                                 f"with --level")
        level = names[0]
    if epoch is not None:
        path = epoch_dir(directory, level, epoch)
        if not (path / META).is_file():
            raise NoCheckpoint(f"no checkpoint of epoch {epoch} for level {level!r}: {path} holds none")
        return path
    per_level = directory / level
    if (per_level / META).is_file():
        return per_level
    last = last_epoch(directory, level)
    if last is not None:
        return epoch_dir(directory, level, last)
    raise NoCheckpoint(f"no policy checkpoint for level {level!r}: neither {per_level} (or its epoch_*) nor "
                       f"{directory} holds one; {HOW_TO_TRAIN}")


@dataclasses.dataclass(frozen=True)
class PolicyInfo:
    """What a policy checkpoint says about itself, read without building the network."""

    path: Path
    meta: dict
    model: ModelConfig
    obs_dim: int
    action_dim: int

    @property
    def trained_max_delay(self) -> int | None:
        """The largest delay a training-time-RTC model was trained with (None: trained without)."""
        delays = self.meta.get("training_delays")
        return int(delays["max_delay"]) if delays else None


def describe(path: Path) -> PolicyInfo:
    """Read and check a policy checkpoint's meta.json and arrays (a ``CheckpointError`` says what is wrong)."""
    meta = load_meta(path)
    if meta.get("kind") != "flow_policy":
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a flow policy")
    try:
        model = ModelConfig(**meta["model"])
        obs_dim, action_dim = int(meta["obs_dim"]), int(meta["action_dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / META} has an invalid model description ({e})") from None
    load_arrays(path)  # a truncated or corrupt weights file fails here, before any work starts
    return PolicyInfo(Path(path), meta, model, obs_dim, action_dim)


def load_policy(path: Path):
    """(FlowPolicy, meta) from a checkpoint directory (``find_checkpoint`` gives one)."""
    from rtchunk.checkpoints import load_policy as load

    return load(path)


def data_meta(policy_meta: dict, level: str | None = None) -> dict:
    """The meta.json of the dataset a ``rtchunk train-policy`` checkpoint was trained on ({} if unknown)."""
    data_dir = policy_meta.get("data_dir")
    if not data_dir:
        return {}
    candidates = sorted(Path(data_dir).glob(f"*/{META}"))
    if level is not None:
        candidates = [p for p in candidates if p.parent.name == level] or candidates
    if len(candidates) != 1:
        return {}
    return read_json(candidates[0], "dataset description")
