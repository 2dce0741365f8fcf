"""Scalar logger writing TensorBoard events and ``progress.csv`` (SB3-style keys).

Keys are namespaced like Stable-Baselines3: ``rollout/ep_cost_mean``,
``train/approx_kl``, ``train/policy_loss``, ``time/fps``, ... Values are
collected with :meth:`Logger.record` / :meth:`Logger.record_mean` and written
together by :meth:`Logger.dump`.

CSV layout: the first column is ``step``, followed by every key in the order
it was first dumped. When a later dump introduces new keys the header grows:
the file is rewritten with the extra columns (earlier rows get empty cells),
as SB3's ``CSVOutputFormat`` does. Keys absent from a dump are left empty.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np
import torch

__all__ = ["Logger"]

CSV_NAME = "progress.csv"


def _as_scalar(key: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"Logger: value for {key!r} must be a scalar, got tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise TypeError(f"Logger: value for {key!r} must be a scalar, got array of shape {value.shape}")
        return float(value.reshape(()))
    if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
        return float(value)
    raise TypeError(f"Logger: value for {key!r} must be a number, got {type(value).__name__}")


class Logger:
    """Accumulates scalars and writes them to TensorBoard and ``run_dir/progress.csv``.

    Args:
        run_dir: output directory (created if missing).
        use_tensorboard: write TensorBoard event files via
            ``torch.utils.tensorboard.SummaryWriter(run_dir)``.
        purge_step: on resume, the first step not yet covered by the checkpoint;
            TensorBoard hides events at or after it that an interrupted run wrote.

    Usable as a context manager (``close`` on exit).
    """

    def __init__(self, run_dir: str | os.PathLike, use_tensorboard: bool = True,
                 purge_step: int | None = None) -> None:
        self.run_dir = os.fspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.csv_path = os.path.join(self.run_dir, CSV_NAME)
        self.writer = None
        if use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.run_dir, purge_step=purge_step)
        self._values: dict[str, float] = {}
        self._mean_sums: dict[str, float] = {}
        self._mean_counts: dict[str, int] = {}
        self._csv_keys: list[str] = []
        # Continue an existing progress.csv (e.g. a resumed run) with its header.
        if os.path.exists(self.csv_path) and os.path.getsize(self.csv_path) > 0:
            with open(self.csv_path, newline="") as f:
                header = next(csv.reader(f), [])
            self._csv_keys = [k for k in header if k != "step"]
        self._closed = False

    def record(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` for the next dump (overwrites, like SB3 ``record``).

        Raises:
            TypeError: if ``value`` is not a real scalar.
        """
        self._values[key] = _as_scalar(key, value)
        self._mean_sums.pop(key, None)
        self._mean_counts.pop(key, None)

    def record_mean(self, key: str, value: Any) -> None:
        """Accumulate ``value``; the dump writes the mean of all values since the last dump."""
        v = _as_scalar(key, value)
        self._values.pop(key, None)
        self._mean_sums[key] = self._mean_sums.get(key, 0.0) + v
        self._mean_counts[key] = self._mean_counts.get(key, 0) + 1

    def _collect(self) -> dict[str, float]:
        out = dict(self._values)
        for key, total in self._mean_sums.items():
            out[key] = total / self._mean_counts[key]
        return out

    def _write_csv(self, step: int, values: dict[str, float]) -> None:
        new_keys = [k for k in values if k not in self._csv_keys]
        if new_keys:
            rows: list[dict[str, str]] = []
            if os.path.exists(self.csv_path) and os.path.getsize(self.csv_path) > 0:
                with open(self.csv_path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self._csv_keys.extend(new_keys)
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["step"] + self._csv_keys, restval="")
                w.writeheader()
                for row in rows:
                    w.writerow({k: v for k, v in row.items() if k is not None})
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step"] + self._csv_keys, restval="")
            row: dict[str, Any] = {"step": int(step)}
            row.update({k: repr(v) if math.isfinite(v) else str(v) for k, v in values.items()})
            w.writerow(row)

    def dump(self, step: int) -> dict[str, float]:
        """Write all recorded scalars at global step ``step`` and clear them.

        Returns:
            The ``{key: float}`` dict that was written (empty dict if nothing
            was recorded; then nothing is written).
        """
        if self._closed:
            raise RuntimeError("Logger.dump called after close()")
        values = self._collect()
        self._values.clear()
        self._mean_sums.clear()
        self._mean_counts.clear()
        if not values:
            return {}
        if self.writer is not None:
            for key, v in values.items():
                self.writer.add_scalar(key, v, int(step))
            self.writer.flush()
        self._write_csv(step, values)
        return values

    def close(self) -> None:
        """Flush and close the TensorBoard writer (idempotent)."""
        if self._closed:
            return
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        self._closed = True

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
