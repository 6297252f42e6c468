"""The ``rtchunk`` command: one subcommand per pipeline stage, each parsed by tyro.

Subcommands are imported only when run, so ``rtchunk <cmd>`` pays for its own imports and nothing else.
Each entry maps a name to ``module:function``; the function's signature (usually one frozen config
dataclass) is the command line.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module:function, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-demo": ("rtchunk.sample_demo:main", "sample chunks with every method from a random policy (no training)"),
    "levels": ("rtchunk.kinetix.levels_cli:main", "list, describe and shrink Kinetix levels"),
    "eval": ("rtchunk.kinetix.sweep:main", "simulated-delay sweep: levels x methods x delays x execute horizons -> CSV"),
    "report": ("rtchunk.kinetix.report:main", "plots and a markdown table from an eval run"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: rtchunk <command> [--help] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rtchunk: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    import tyro

    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = tyro.cli(
        func, args=rest, prog=f"rtchunk {name}", description=COMMANDS[name][1], config=(tyro.conf.OmitArgPrefixes,)
    )
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
