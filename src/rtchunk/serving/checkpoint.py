"""From a checkpoint directory to a backend the server can sample with (JAX, or the PyTorch port)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from rtchunk.methods import DEFAULT_NUM_STEPS, MethodSettings

BACKENDS = ("jax", "torch")


def find_checkpoint(policy_dir: Path, level: str | None = None) -> Path:
    """The checkpoint to serve (``rtchunk.kinetix.policy_store.find_checkpoint``: a checkpoint itself, or the
    last epoch of a ``rtchunk train-policy`` run), with errors that name the flag to change."""
    from rtchunk.kinetix.policy_store import AmbiguousLevel, NoCheckpoint
    from rtchunk.kinetix.policy_store import find_checkpoint as find

    try:
        return find(policy_dir, level)
    except AmbiguousLevel as e:
        raise ValueError(f"--level: {e}") from None
    except NoCheckpoint as e:
        raise ValueError(f"--policy-dir: {e}") from None


def load_backend(policy_dir: Path, *, backend: Literal["jax", "torch"] = "jax", level: str | None = None,
                 method_names: Sequence[str] | None = None, settings: MethodSettings = MethodSettings(),
                 num_steps: int = DEFAULT_NUM_STEPS, max_batch: int = 8, default_method: str | None = None):
    """(backend, checkpoint path) for the checkpoint ``find_checkpoint`` picks. ``method_names`` defaults
    to every method a server can sample (``trained_prefix`` only for a prefix-trained model)."""
    if backend not in BACKENDS:
        from rtchunk.choices import unknown_choice

        raise unknown_choice("--backend", backend, BACKENDS)
    path = find_checkpoint(policy_dir, level)
    from rtchunk.checkpoints import load_meta

    meta = load_meta(path)
    delays = meta.get("training_delays")
    max_trained_delay = int(delays["max_delay"]) if isinstance(delays, dict) and "max_delay" in delays else None
    wanted = set(method_names or ()) | {default_method}
    if "trained_prefix" in wanted and max_trained_delay is None:
        raise ValueError(f"--method trained_prefix needs a model trained with prefix conditioning (rtchunk "
                         f"train-policy --simulated-delay); {path} has no 'training_delays' in its meta.json")
    description = f"{path} ({backend})"
    if backend == "jax":
        from rtchunk.checkpoints import load_policy
        from rtchunk.serving.jax_backend import JaxBackend

        policy, _ = load_policy(path)
        return JaxBackend(policy, method_names=method_names, settings=settings, num_steps=num_steps,
                          max_batch=max_batch, max_trained_delay=max_trained_delay, description=description), path
    from rtchunk.serving.torch_backend import TorchBackend
    from rtchunk.torch import load_policy as load_torch_policy

    policy, _ = load_torch_policy(path)
    return TorchBackend(policy, method_names=method_names, settings=settings, num_steps=num_steps,
                        max_trained_delay=max_trained_delay, description=description), path
