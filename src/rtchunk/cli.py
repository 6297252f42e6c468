"""The ``rtchunk`` command: one subcommand per pipeline stage, each parsed by tyro.

Subcommands are imported only when run, so ``rtchunk <cmd>`` pays for its own imports and nothing else.
Each entry maps a name to ``module:function``. A function taking one frozen config dataclass gets that
dataclass as its command line (``--field``, ``--nested.field``); where ``PRESETS`` names a dict of
ready-made configs, ``--preset NAME`` picks the defaults that the other flags then override.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
import typing
from pathlib import Path

# name -> (module:function, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rtchunk.demo:main", "the whole pipeline on one level, sized for a laptop CPU (about 13 min)"),
    "sample-demo": ("rtchunk.sample_demo:main", "sample chunks with every method from a random policy (no training)"),
    "levels": ("rtchunk.kinetix.levels_cli:main", "list, describe and shrink Kinetix levels"),
    "eval": ("rtchunk.kinetix.sweep:main", "simulated-delay sweep: levels x methods x delays x execute horizons -> CSV"),
    "report": ("rtchunk.kinetix.report:main", "plots and a markdown table from an eval run"),
    "train-expert": ("rtchunk.kinetix.expert:main", "train PPO experts on Kinetix levels (seeds x levels)"),
    "generate-data": ("rtchunk.kinetix.generate:main", "record expert data for behaviour cloning"),
    "train-policy": ("rtchunk.kinetix.bc:main", "train flow policies on expert data (optionally training-time RTC)"),
    "live": ("rtchunk.kinetix.live:main", "a level in wall-clock time driven by the async runtime, +injected latency"),
    "serve": ("rtchunk.commands.serve:main", "serve a policy over openpi's websocket protocol, with RTC and batching"),
}


# name -> module:ATTRIBUTE holding {preset name: config instance}
PRESETS: dict[str, str] = {
    "demo": "rtchunk.demo:PRESETS",
    "train-expert": "rtchunk.kinetix.expert:PRESETS",
    "generate-data": "rtchunk.kinetix.generate:PRESETS",
    "train-policy": "rtchunk.kinetix.bc:PRESETS",
    "eval": "rtchunk.kinetix.sweep:PRESETS",
}


def _load(target: str):
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def _config_type(func):
    """The dataclass a command function takes as its only parameter, or None."""
    params = list(inspect.signature(func).parameters.values())
    if len(params) != 1:
        return None
    hint = typing.get_type_hints(func).get(params[0].name)
    return hint if dataclasses.is_dataclass(hint) else None


def _pop_preset(args: list[str]) -> tuple[str | None, list[str]]:
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2 :]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
    return None, args


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: rtchunk <command> [--help] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def default_cache_dir() -> Path:
    """$RTCHUNK_CACHE_DIR, else $XDG_CACHE_HOME/rtchunk/jax, else ~/.cache/rtchunk/jax."""
    if os.environ.get("RTCHUNK_CACHE_DIR"):
        return Path(os.environ["RTCHUNK_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtchunk" / "jax"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rtchunk: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # On a CPU, two host devices let every stage shard over both cores (about 1.9x on 2 cores); this must
    # happen before JAX starts, and XLA_FLAGS set by the user wins.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    # A persistent compilation cache: the physics compiles into every stage (tens of seconds each on a
    # CPU), and a rerun or a resumed run then loads it instead. JAX_COMPILATION_CACHE_DIR="" turns it off.
    # (JAX is already imported with the package, so the setting goes through its config, not the variable.)
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(default_cache_dir()))
    import tyro

    func = _load(COMMANDS[name][0])
    description = COMMANDS[name][1]
    config_type = _config_type(func)
    preset, rest = _pop_preset(rest)
    if config_type is None:
        if preset is not None:
            print(f"rtchunk {name}: this command has no presets", file=sys.stderr)
            return 2
        result = tyro.cli(func, args=rest, prog=f"rtchunk {name}", description=description)
    else:
        presets = _load(PRESETS[name]) if name in PRESETS else {}
        if preset is not None and preset not in presets:
            choices = ", ".join(presets) or "none"
            print(f"rtchunk {name}: unknown preset {preset!r} (choices: {choices})", file=sys.stderr)
            return 2
        if presets:
            description += f" (presets: {', '.join(presets)}; --preset NAME sets the defaults)"
        kwargs = {"default": presets[preset]} if preset is not None else {}
        config = tyro.cli(config_type, args=rest, prog=f"rtchunk {name}", description=description, **kwargs)
        result = func(config)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
