"""``rtchunk report``: the papers' plots and a markdown table from an eval run (``rtchunk.kinetix.report``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtchunk.kinetix import report


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    run: Path
    """An eval run directory (holding results*.csv)."""
    out: Path | None = None
    """Where plots and report.md go (default: the run directory)."""
    d_for_horizon_plot: int = 1
    """The delay d of the solve-rate-against-execute-horizon plot."""

    def __post_init__(self):
        if self.d_for_horizon_plot < 0:
            raise ValueError(f"--d-for-horizon-plot must be >= 0, got {self.d_for_horizon_plot}")


def main(config: ReportConfig) -> int:
    path = report.write_report(config.run, config.out, config.d_for_horizon_plot)
    print(f"report: {path}")
    return 0
