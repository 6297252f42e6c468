"""``rtchunk live``: a Kinetix level in wall-clock time driven by the asynchronous runtime, with injected
latency (``rtchunk.kinetix.live``)."""

from __future__ import annotations

from rtchunk.kinetix import live
from rtchunk.kinetix.live import LiveConfig


def main(config: LiveConfig) -> int:
    rows = live.run(config, log=lambda message: print(message, flush=True))
    print()
    print(live.markdown_table(rows))
    print(f"results: {config.out}/results.csv and {config.out}/results.md; per run: {config.out}/<method>_plus<ms>ms/ "
          f"(ticks.csv, inferences.csv, telemetry.json, telemetry.png, episode.mp4)")
    return 0
