"""From a checkpoint directory to a backend the server can sample with (JAX, or the PyTorch port)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from rtchunk.methods import DEFAULT_NUM_STEPS, MethodSettings

BACKENDS = ("jax", "torch")


def find_checkpoint(policy_dir: Path, level: str | None = None) -> Path:
    """The checkpoint to serve: ``policy_dir`` itself if it is one, else the last epoch of a
    ``rtchunk train-policy`` run (``<dir>/<level>/epoch_XXX``; ``level`` picks one where it holds several)."""
    from rtchunk.checkpoints import META

    policy_dir = Path(policy_dir)
    if (policy_dir / META).is_file():
        return policy_dir
    if not policy_dir.is_dir():
        raise ValueError(f"--policy-dir: no checkpoint at {policy_dir} (train one with `rtchunk train-policy` "
                         f"or `rtchunk demo`)")
    epochs = sorted(p for p in policy_dir.glob("epoch_*") if (p / META).is_file())
    if not epochs:
        levels = sorted(p.name for p in policy_dir.iterdir() if p.is_dir() and any(p.glob(f"epoch_*/{META}")))
        if level is None and len(levels) > 1:
            raise ValueError(f"--level: {policy_dir} holds policies for several levels ({', '.join(levels)}); "
                             f"choose one")
        name = level if level is not None else (levels[0] if levels else None)
        if name is not None:
            epochs = sorted(p for p in (policy_dir / name).glob("epoch_*") if (p / META).is_file())
    if not epochs:
        where = f"{policy_dir}/{level}" if level else str(policy_dir)
        raise ValueError(f"--policy-dir: no checkpoint in {where} (neither meta.json nor <level>/epoch_*/meta.json)")
    return max(epochs, key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else -1)


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
