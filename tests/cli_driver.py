"""Runs many ``rtchunk`` command lines in one process, through ``rtchunk.cli.main`` (the console script's entry
point), so that a table of bad inputs pays Python's and JAX's start-up once instead of once a case.

    python tests/cli_driver.py cases.json results.json

cases.json: a list of argument lists; results.json: per case {"returncode", "stdout", "stderr", "seconds"}, where stdout
and stderr are everything written to file descriptors 1 and 2 (C++ logging included) while the case ran.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time

CASE_SECONDS = 90
"""A bad input fails within seconds; a case still running after this was accepted and started real work (a
preset changed under the table), so it is stopped and reported instead of timing the whole table out."""


class Accepted(BaseException):  # not an Exception: the command's own error handling must not catch it
    pass


def _stop(signum, frame):
    raise Accepted


def run_case(args: list[str]) -> dict:
    from rtchunk import cli

    started = time.perf_counter()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    files = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, f in files.items():
            os.dup2(f.fileno(), fd)
        signal.signal(signal.SIGALRM, _stop)
        signal.alarm(CASE_SECONDS)
        try:
            code = cli.main(args)
        except SystemExit as e:  # tyro's --help and parse errors exit
            code = e.code if isinstance(e.code, int) else 1
        except Accepted:
            code = -1
            print(f"cli_driver: still running after {CASE_SECONDS} s, so the input was accepted; stopped",
                  file=sys.stderr)
        finally:
            signal.alarm(0)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
    out = {}
    for fd, f in files.items():
        f.seek(0)
        out[fd] = f.read().decode(errors="replace")
        f.close()
    return {"returncode": code, "stdout": out[1], "stderr": out[2], "seconds": time.perf_counter() - started}


def main() -> int:
    cases_path, results_path = sys.argv[1:3]
    with open(cases_path) as f:
        cases = json.load(f)
    with open(results_path, "w") as f:
        json.dump([run_case(args) for args in cases], f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
