"""Safe, atomic checkpoints: arrays in safetensors, everything else in JSON, no pickle anywhere.

A checkpoint is a directory holding ``arrays.safetensors`` (any pytree of arrays, keyed by its path,
e.g. ``blocks/0/channel_in/kernel``) and ``meta.json`` (configs, dimensions, stats). The directory is
written under a temporary name and renamed into place, so a crash leaves either the old checkpoint or
the new one, never half of one. Loading checks every name, shape and dtype against what the caller
expects and raises ``CheckpointError`` (a ``ValueError``) saying what does not match.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rtchunk.files import atomic_write_bytes, atomic_write_text, to_jsonable  # noqa: F401 (re-exported)

ARRAYS = "arrays.safetensors"
META = "meta.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match what the caller expects."""


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten(tree) -> dict[str, np.ndarray]:
    """{'a/b/0/c': array} for every array leaf of a pytree (nnx.State variables unwrapped)."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path]
        if names and names[-1] == "value":  # nnx.Variable wrapper
            names = names[:-1]
        out["/".join(names)] = np.asarray(leaf)
    return out


def check_arrays(arrays: dict[str, np.ndarray], expected: dict[str, np.ndarray], source: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` naming every array of ``expected`` that ``arrays`` lacks, has extra, or holds
    with another shape or dtype (numpy only: the PyTorch port loads through it too)."""
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing arrays: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected arrays: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for name in sorted(set(expected) & set(arrays)):
        want, got = expected[name], arrays[name]
        if want.shape != got.shape or want.dtype != got.dtype:
            problems.append(f"{name}: expected {want.dtype}{list(want.shape)}, found {got.dtype}{list(got.shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match the expected structure: " + "; ".join(problems))


def unflatten_like(arrays: dict[str, np.ndarray], like, source: str = "checkpoint"):
    """Rebuild ``like``'s pytree from ``arrays``, checking names, shapes and dtypes."""
    import jax

    expected = flatten(like)
    check_arrays(arrays, expected, source)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    names = list(expected)  # same order as tree_flatten
    assert len(names) == len(leaves)
    return jax.tree_util.tree_unflatten(treedef, [arrays[n] for n in names])


def save(directory: Path, tree, meta: dict[str, Any]) -> Path:
    """Save a pytree of arrays and a JSON-able ``meta`` as one checkpoint directory, atomically."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        arrays = {k: np.ascontiguousarray(v) for k, v in flatten(tree).items()}
        save_file(arrays, str(tmp / ARRAYS))
        body = {"format_version": FORMAT_VERSION, **to_jsonable(meta)}
        (tmp / META).write_text(json.dumps(body, indent=2, sort_keys=True))
        if directory.exists():
            # Renaming over a non-empty directory is not possible; move the old one aside first.
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory}: {META} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an rtchunk checkpoint of format version {FORMAT_VERSION}")
    return meta


def load_arrays(directory: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(directory) / ARRAYS
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory}: {ARRAYS} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e})") from None


def load(directory: Path, like) -> tuple[Any, dict[str, Any]]:
    """(pytree shaped like ``like``, meta) from a checkpoint directory."""
    meta = load_meta(directory)
    return unflatten_like(load_arrays(directory), like, source=str(directory)), meta


# -- flow policies -----------------------------------------------------------------------------------


def save_policy(directory: Path, policy, meta: dict[str, Any] | None = None) -> Path:
    """A FlowPolicy's weights with its config and dimensions (plus any extra ``meta``)."""
    import flax.nnx as nnx

    body = {
        "kind": "flow_policy",
        "obs_dim": policy.obs_dim,
        "action_dim": policy.action_dim,
        "model": policy.config,
        **(meta or {}),
    }
    return save(directory, nnx.to_pure_dict(nnx.state(policy, nnx.Param)), body)


def load_policy(directory: Path):
    """(FlowPolicy, meta) from a checkpoint written by ``save_policy``."""
    import flax.nnx as nnx

    from rtchunk.model import FlowPolicy
    from rtchunk.model_config import ModelConfig

    meta = load_meta(directory)
    if meta.get("kind") != "flow_policy":
        raise CheckpointError(f"{directory} holds a {meta.get('kind')!r} checkpoint, not a flow policy")
    try:
        config = ModelConfig(**meta["model"])
        policy = FlowPolicy(int(meta["obs_dim"]), int(meta["action_dim"]), config, rngs=nnx.Rngs(0))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/{META} has an invalid model description ({e})") from None
    state = nnx.state(policy, nnx.Param)
    weights = unflatten_like(load_arrays(directory), nnx.to_pure_dict(state), source=str(directory))
    nnx.replace_by_pure_dict(state, weights)
    nnx.update(policy, state)
    return policy, meta
