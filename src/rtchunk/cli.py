"""The ``rtchunk`` command: dispatch to ``rtchunk.commands.<name>``, and the process-wide options, set once.

Each command is a module of ``rtchunk.commands`` named after it (``train-policy`` -> ``train_policy.py``),
imported only when run, whose ``main`` takes one frozen config dataclass: tyro turns it into the command
line (``--field``, ``--nested.field``). Where the module has ``PRESETS``, ``--preset NAME`` picks the
defaults that the other flags then override (``DEFAULT_PRESET``, where there is one, without ``--preset``).

A rejected input (any ``ValueError``: a bad value, a missing or corrupt checkpoint, dataset or level)
ends as one line on stderr, ``rtchunk <command>: error: <message>``, and exit code 2; ``--debug`` (or
``RTCHUNK_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import re
import sys
import typing
from pathlib import Path

from rtchunk.choices import unknown_choice

COMMANDS: dict[str, str] = {
    "demo": "rtchunk reproduce on one level, sized for a 2-core laptop CPU (under 15 min)",
    "sample-demo": "sample chunks with every method from a random policy (no training)",
    "levels": "list, describe and shrink Kinetix levels",
    "eval": "simulated-delay sweep: levels x methods x delays x execute horizons -> CSV",
    "report": "plots and a markdown table from an eval run",
    "train-expert": "train PPO experts on Kinetix levels (seeds x levels)",
    "generate-data": "record expert data for behaviour cloning",
    "train-policy": "train flow policies on expert data (optionally training-time RTC)",
    "live": "a level in wall-clock time driven by the async runtime, +injected latency",
    "serve": "serve a policy over openpi's websocket protocol, with RTC and batching",
    "reproduce": "the papers' whole protocol over a list of levels, resumable (--preset paper|cpu|smoke)",
}
"""Command name -> one-line description; the code is ``rtchunk.commands.<name with _ for ->``."""

HOST_DEVICES = 2
"""CPU devices XLA is asked for (unless XLA_FLAGS says otherwise): every stage shards over both cores of a
laptop (about 1.9x on 2 cores)."""

# Errors a user's input causes: bad values (ValueError, which CheckpointError is) and paths that cannot be used.
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def command_module(name: str):
    return importlib.import_module(f"rtchunk.commands.{name.replace('-', '_')}")


def default_cache_dir() -> Path:
    """$RTCHUNK_CACHE_DIR, else $XDG_CACHE_HOME/rtchunk/jax, else ~/.cache/rtchunk/jax."""
    if os.environ.get("RTCHUNK_CACHE_DIR"):
        return Path(os.environ["RTCHUNK_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtchunk" / "jax"


class _QuietAbsl(logging.Filter):
    """Drops the warning Grain (imported by Kinetix) logs on every start with this jaxlib: it concerns Grain's
    multiprocess profiler, which nothing here uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Grain multiprocess worker profiling" not in record.getMessage()


def set_process_options() -> None:
    """XLA's host device count, the persistent compilation cache and log silencing: once, before any command."""
    # The device count must be set before JAX starts; XLA_FLAGS set by the user wins.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={HOST_DEVICES}".strip()
    # A persistent compilation cache: the physics compiles into every stage (tens of seconds each on a
    # CPU), and a rerun or a resumed run then loads it instead. JAX_COMPILATION_CACHE_DIR="" turns it off.
    # Before JAX starts the variable is enough; once it has, only its config takes the setting.
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_compilation_cache_dir", str(default_cache_dir()))
        else:
            os.environ["JAX_COMPILATION_CACHE_DIR"] = str(default_cache_dir())
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _QuietAbsl) for f in absl.filters):
        absl.addFilter(_QuietAbsl())


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: rtchunk <command> [--help] [--preset NAME] [--debug] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, desc in COMMANDS.items()]
    return "\n".join(lines)


def _config_type(func):
    """The dataclass a command function takes as its only parameter, or None."""
    params = list(inspect.signature(func).parameters.values())
    if len(params) != 1:
        return None
    hint = typing.get_type_hints(func).get(params[0].name)
    return hint if dataclasses.is_dataclass(hint) else None


def _pop_option(args: list[str], name: str, takes_value: bool) -> tuple[str | bool | None, list[str]]:
    """(value, the other args) for ``--name VALUE`` / ``--name=VALUE``, or (True, ...) for a flag."""
    for i, arg in enumerate(args):
        if takes_value and arg == name and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2 :]
        if takes_value and arg.startswith(name + "="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
        if not takes_value and arg == name:
            return True, args[:i] + args[i + 1 :]
    return None, args


class _Rejected(ValueError):
    """A ValueError tyro caught while building the config, re-raised so that it ends as one line."""


def _flag(argument) -> str:
    return "/".join(argument.lowered.name_or_flags)


def _flags(config_type, prefix: str = "") -> dict[str, str]:
    """{field name: its flag} over a config's dataclass tree, as tyro names them (a nested config adds
    ``name.``, a flattened one nothing); a name used twice with different flags is left out."""
    out: dict[str, str] = {}
    ambiguous: set[str] = set()
    hints = typing.get_type_hints(config_type, include_extras=True)
    for field in dataclasses.fields(config_type):
        hint = hints.get(field.name)
        flattened = any(getattr(m, "name", None) == "" for m in getattr(hint, "__metadata__", ()))
        inner = typing.get_args(hint)[0] if hasattr(hint, "__metadata__") else hint
        dashed = field.name.replace("_", "-")
        nested = [t for t in (typing.get_args(inner) or (inner,)) if dataclasses.is_dataclass(t)]
        entries = {field.name: f"--{prefix}{dashed}"}
        for t in nested:
            entries.update(_flags(t, prefix if flattened else f"{prefix}{dashed}."))
        for name, flag in entries.items():
            if out.get(name, flag) != flag:
                ambiguous.add(name)
            out[name] = flag
    return {k: v for k, v in out.items() if k not in ambiguous}


def _name_the_flag(message: str, flags: dict[str, str]) -> str:
    """"batch_size must be ..." -> "--batch-size must be ...": a config field's message names its flag."""
    field = re.match(r"([a-z][a-z0-9_]*) must\b", message)
    if not field or field.group(1) not in flags:
        # A nested config names its flags as if it stood alone ("--methods: ..." in reproduce's --eval).
        flag = re.match(r"--([a-z][a-z0-9-]*)\b(?![.-])", message)
        name = flag and flag.group(1).replace("-", "_")
        return flags[name] + message[flag.end():] if name in flags else message
    return flags[field.group(1)] + message[field.end(1):]


def _parse_error_message(event, errors) -> str | None:
    """One line for a tyro parse failure, or None to leave it to tyro (its multi-line box, exit code 2)."""
    if isinstance(event, errors.InstantiationFailure):
        if event.argument is not None:  # a value tyro could not convert
            return f"{_flag(event.argument)}: {event.message}"
        # A __post_init__ rejected a value. tyro calls the hook while handling that error: the prefix of the
        # nested config it came from is on the exception.
        prefix = getattr(sys.exc_info()[1], "arg", None)
        message = str(event.message)
        if isinstance(prefix, str) and prefix and not message.startswith("-"):
            field = re.match(r"([a-z][a-z0-9_]*) must\b", message)
            flag = f"--{prefix}.{field.group(1).replace('_', '-')}" if field else None
            return flag + message[field.end(1):] if flag else f"--{prefix}.*: {message}"
        return message
    if isinstance(event, errors.InvalidChoice):
        return str(unknown_choice(_flag(event.argument), event.value, event.choices))
    if isinstance(event, errors.BadValue):
        value = f" {event.offending_value!r}" if event.offending_value is not None else ""
        return f"{_flag(event.argument)}: bad value{value} ({event.reason})"
    if isinstance(event, errors.UnrecognizedArgs):
        return (f"unrecognized arguments: {' '.join(event.tokens)} (see rtchunk {event.prog.split()[-1]} --help; the "
                f"options of a nested choice such as estimator:max-estimator come after its name)")
    if isinstance(event, errors.MissingArgs):
        return f"missing required argument(s): {', '.join(_flag(a.arg) for a in event.missing_arguments)}"
    return None


def _tyro_cli(target, **kwargs):
    """``tyro.cli``, where a rejected input is raised as ``_Rejected`` (one line) instead of tyro's box."""
    import tyro

    try:
        errors = importlib.import_module("tyro._errors")
        on_parse_error = errors.on_parse_error
    except (ImportError, AttributeError):  # an older tyro: its own error box (still exit code 2)
        return tyro.cli(target, **kwargs)

    def hook(event):
        try:
            message = _parse_error_message(event, errors)
        except (AttributeError, TypeError):  # an event of another tyro version: tyro reports it itself
            message = None
        if message is not None:
            raise _Rejected(message)

    with on_parse_error(hook):
        if not inspect.isclass(target):  # a command function: its own errors are not about flags
            return tyro.cli(target, **kwargs)
        try:
            return tyro.cli(target, **kwargs)
        except _Rejected:
            raise
        except ValueError as e:  # tyro lets a flattened nested config's ValueError through unchanged
            raise _Rejected(str(e)) from e


def run_command(name: str, args: list[str]) -> int:
    """Parse ``args`` into the command's config and run it (a ValueError for a rejected input)."""
    module = command_module(name)
    func = module.main
    description = COMMANDS[name]
    presets = getattr(module, "PRESETS", {})
    preset, args = _pop_option(args, "--preset", takes_value=True)
    if preset is not None and not presets:
        raise ValueError(f"--preset: rtchunk {name} has no presets")
    if preset is not None and preset not in presets:
        raise unknown_choice("--preset", preset, presets)
    config_type = _config_type(func)
    prog = f"rtchunk {name}"
    if config_type is None:
        result = _tyro_cli(func, args=args, prog=prog, description=description)
    else:
        if presets:
            description += f" (presets: {', '.join(presets)}; --preset NAME sets the defaults)"
        preset = preset if preset is not None else getattr(module, "DEFAULT_PRESET", None)
        kwargs = {"default": presets[preset]} if preset is not None else {}
        config = _tyro_cli(config_type, args=args, prog=prog, description=description, **kwargs)
        result = func(config)
    return result if isinstance(result, int) else 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rtchunk: error: {unknown_choice('command', name, COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    debug, rest = _pop_option(rest, "--debug", takes_value=False)
    debug = bool(debug) or os.environ.get("RTCHUNK_DEBUG", "") not in ("", "0")
    set_process_options()
    try:
        return run_command(name, rest)
    except INPUT_ERRORS as e:
        if debug:
            raise
        config_type = _config_type(command_module(name).main)
        message = _name_the_flag(_one_line(e), _flags(config_type) if config_type else {})
        print(f"rtchunk {name}: error: {message}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
