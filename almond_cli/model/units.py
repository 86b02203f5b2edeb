"""Units apart from rows: which latent each data row belongs to.

A unit is what carries one latent z (and one set of persistent chains): a data point today, a group of a mixed
model (many rows sharing one random effect) next. Every layer that takes a batch of units takes its rows x (R, D)
together with ``units`` (R,), a long tensor mapping each row to its unit's position 0..B-1 in the batch; the
latents are per unit, z (B, C, d). ``units=None`` means every row is its own unit (R = B, row i is unit i), and
every layer keeps its one-row-per-unit code path then (no gather, no scatter), so those results are bitwise
what they were before units existed.

The log-likelihood of a unit is the sum over its rows: log f(x_unit | h(z)) = Σ_{r in unit} log f(x_r | h(z)).
"""

from __future__ import annotations

import torch
from torch import Tensor


def sum_over_rows(per_row: Tensor, units: Tensor, num_units: int) -> Tensor:
    """Σ over each unit's rows. Args: per_row (R, ...), units (R,) into 0..num_units-1. Returns (num_units, ...)."""
    return per_row.new_zeros((num_units, *per_row.shape[1:])).index_add_(0, units, per_row)


def count(units: Tensor | None, num_rows: int) -> int:
    """The number of units of a batch: ``num_rows`` when ``units`` is None, else max + 1 (one host sync)."""
    if units is None:
        return num_rows
    return int(units.max()) + 1 if units.numel() else 0


class UnitRows:
    """The rows of each unit of a data set, for gathering a batch of units with all their rows.

    Args:
        unit_index: (n,) long, row -> unit in 0..U-1 (every unit has at least one row).
        num_units: U; by default ``unit_index.max() + 1``.
    """

    def __init__(self, unit_index: Tensor, num_units: int | None = None):
        unit_index = unit_index.long().cpu()
        self.num_units = count(unit_index, 0) if num_units is None else int(num_units)
        self.order = torch.sort(unit_index, stable=True).indices  # the rows, unit by unit, each unit's in row order
        self.counts = torch.bincount(unit_index, minlength=self.num_units)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def of(self, units: Tensor) -> tuple[Tensor, Tensor]:
        """The rows of ``units`` (B,) and where each row's unit sits in the batch.

        Returns:
            (rows (R,), local (R,)): the row indices, unit by unit in the order of ``units`` (each unit's rows in
            row order), and each row's unit's position 0..B-1 in ``units``.
        """
        units = units.long().cpu()
        counts = self.counts[units]
        local = torch.repeat_interleave(torch.arange(units.shape[0]), counts)
        first = torch.cumsum(counts, 0) - counts  # where each unit's rows start in the output
        within = torch.arange(local.shape[0]) - first[local]
        return self.order[self.offsets[units][local] + within], local
