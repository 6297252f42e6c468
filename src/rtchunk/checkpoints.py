"""Safe, atomic checkpoints: arrays in safetensors, everything else in JSON, no pickle anywhere.

A checkpoint is a directory holding ``arrays.safetensors`` (any pytree of arrays, keyed by its path,
e.g. ``blocks/0/channel_in/kernel``) and ``meta.json`` (configs, dimensions, stats). The directory is
written under a temporary name and renamed into place, so a crash leaves either the old checkpoint or
the new one, never half of one. Loading checks every name, shape and dtype against what the caller
expects and raises ``CheckpointError`` (a ``ValueError``) saying what does not match.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

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
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path]
        if names and names[-1] == "value":  # nnx.Variable wrapper
            names = names[:-1]
        out["/".join(names)] = np.asarray(leaf)
    return out


def unflatten_like(arrays: dict[str, np.ndarray], like, source: str = "checkpoint"):
    """Rebuild ``like``'s pytree from ``arrays``, checking names, shapes and dtypes."""
    expected = flatten(like)
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
    leaves, treedef = jax.tree_util.tree_flatten(like)
    names = list(expected)  # same order as tree_flatten
    assert len(names) == len(leaves)
    return jax.tree_util.tree_unflatten(treedef, [arrays[n] for n in names])


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, numpy scalars and paths as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file under a temporary name in the same directory, then rename it into place."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write_text`` for binary files (plots, videos)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    from rtchunk.model import FlowPolicy, ModelConfig

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
