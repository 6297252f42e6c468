"""Optional experiment tracking: the statistics rows the training commands write to ``stats.csv``, also
sent to Weights & Biases when ``--wandb-project`` is given (``pip install 'rtchunk[wandb]'``).

The CSV stays the record (resume never depends on W&B); a tracker only mirrors it. Rows are keyed by
level (and seed, for experts): ``h17_unicycle/seed_0/solve_rate`` at step ``env_steps`` or ``epoch``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from rtchunk.files import to_jsonable


class Tracker:
    """``log(rows)``; a no-op unless a project was given."""

    def __init__(self, project: str | None, *, run_name: str, config: Any, step_key: str, group_keys=("level",),
                 directory: Path | None = None):
        self.step_key = step_key
        self.group_keys = tuple(group_keys)
        self._run = None
        if not project:
            return
        try:
            import wandb
        except ImportError:
            raise ValueError("--wandb-project needs Weights & Biases: pip install 'rtchunk[wandb]'") from None
        cfg = to_jsonable(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config)
        # resume="allow" with a stable id: a resumed training run continues the same W&B run.
        run_id = "".join(c if c.isalnum() else "-" for c in f"{run_name}")[-64:]
        self._run = wandb.init(project=project, name=run_name, id=run_id, resume="allow", config=cfg,
                               dir=str(directory) if directory else None)

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, rows: Iterable[dict]) -> None:
        if self._run is None:
            return
        rows = list(rows)
        if not rows:
            return
        flat: dict[str, float] = {}
        for row in rows:
            prefix = "/".join(_part(k, row[k]) for k in self.group_keys if k in row)
            for key, value in row.items():
                if key in self.group_keys or key == self.step_key or not isinstance(value, (int, float)):
                    continue
                flat[f"{prefix}/{key}" if prefix else key] = value
        self._run.log(flat, step=int(rows[0][self.step_key]))

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def _part(key: str, value) -> str:
    return str(value) if key == "level" else f"{key}_{value}"
