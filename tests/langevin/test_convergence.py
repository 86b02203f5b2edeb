"""Drawing until every row's chains pass R-hat <= 1.01 and bulk ESS >= 400, or a cap (langevin/convergence.py)."""

import numpy as np
import pytest
import torch

from almond_cli.langevin.convergence import halve, row_diagnostics, run_until_converged

CHAINS = 20


class AR1Rows:
    """Rows of AR(1) chains x_t = rho x_{t-1} + sqrt(1 - rho²) e_t (stationary N(0, 1), started there), one rho per
    row; asked for draws ``spacing`` apart, a row's chains move spacing steps per draw (rho ** spacing between
    kept draws), as ``almond sample``'s chains do. Records which rows each block asked for."""

    def __init__(self, rho, offsets=None, seed=0):
        self.rho = torch.tensor(rho, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.state = torch.randn(len(rho), CHAINS, generator=self.generator, dtype=torch.float64)
        self.offsets = torch.zeros(len(rho), CHAINS) if offsets is None else offsets  # (rows, C) added to draws
        self.asked = []

    def __call__(self, rows, count, spacing):
        self.asked.append((rows.tolist(), count, spacing))
        rho = self.rho[rows] ** spacing
        x, out = self.state[rows], []
        for _ in range(count):
            x = rho[:, None] * x + (1 - rho[:, None] ** 2).sqrt() * torch.randn(
                x.shape, generator=self.generator, dtype=torch.float64
            )
            out.append(x + self.offsets[rows])
        self.state[rows] = x
        return torch.stack(out, 1).reshape(len(rows), count * CHAINS, 1).float()  # draw-major


def test_independent_draws_pass_at_the_first_check():
    """20 chains x 100 independent draws: bulk ESS about 2,000 and R-hat within about 0.003 of 1 per row; the
    chance that one of 5 rows passes 1.01 is below 1e-4 (the split-R-hat's sd at 40 half-chains of 50 is about
    0.0025), so one check and no more draws."""
    rows = AR1Rows([0.0] * 5)
    draws, checked = run_until_converged(rows, 5, CHAINS, 100, 3200)
    assert checked.converged and checked.stopped_by == "converged" and checked.checks == 1
    assert rows.asked == [(list(range(5)), 100, 1)]
    assert draws.shape == (5, 100 * CHAINS, 1) and checked.longest_chain == 100
    assert checked.rhat_max <= 1.01 and checked.ess_bulk_min >= 400


def test_only_the_failing_row_runs_longer_until_it_passes():
    """Row 1 mixes slowly (rho = 0.98: bulk ESS about 20 · 200 · 0.02 / 1.98 ~ 40 of 4,000 draws): it fails; its
    chains alone run 2, 4, ... times longer, keeping every other draw, until at spacing 64 to 128 (rho^s = 0.27 to
    0.08: ESS 2,300 to 3,400 of 4,000, R-hat's sd about 0.002) it passes. Row 0 (independent) is never drawn
    again. Without the doubling (or with it drawing the wrong rows) row 1 would stop at the cap."""
    rows = AR1Rows([0.0, 0.98])
    draws, checked = run_until_converged(rows, 2, CHAINS, 200, 200 * 256)
    assert checked.converged, (checked.rhat, checked.ess_bulk)
    assert all(asked[0] == [1] for asked in rows.asked[1:])
    assert [asked[2] for asked in rows.asked] == [1] + [2**k for k in range(len(rows.asked) - 1)]
    assert checked.spacing[0] == 1 and checked.spacing[1] == 2 ** (len(rows.asked) - 1) >= 16
    assert draws.shape == (2, 200 * CHAINS, 1)  # the kept draws stay 200 per chain
    assert checked.ess_bulk[1] >= 400 and checked.rhat[1] <= 1.01


def test_chains_that_never_agree_stop_at_the_cap_and_say_so():
    """Each chain of row 1 sits around its own level (offsets 0..19, chain sd 1): no length makes them agree, so the
    doubling runs 100 -> 3,200 draws' worth (5 more blocks) and reports the cap, with R-hat far above 1.01."""
    offsets = torch.zeros(2, CHAINS)
    offsets[1] = torch.arange(CHAINS, dtype=torch.float32)
    rows = AR1Rows([0.0, 0.0], offsets)
    draws, checked = run_until_converged(rows, 2, CHAINS, 100, 3200)
    assert not checked.converged and checked.stopped_by == "max_draws"
    assert checked.checks == 6 and checked.longest_chain == 3200
    assert checked.rhat[1] > 2 and checked.rhat[0] <= 1.01
    assert draws.shape == (2, 100 * CHAINS, 1)


def test_the_time_bound_stops_before_a_new_block():
    offsets = torch.zeros(1, CHAINS)
    offsets[0] = torch.arange(CHAINS, dtype=torch.float32)
    ticks = iter(range(0, 1000, 10))
    _, checked = run_until_converged(
        AR1Rows([0.0], offsets), 1, CHAINS, 100, 3200, max_seconds=25, clock=lambda: next(ticks)
    )
    assert checked.stopped_by == "max_seconds" and not checked.converged and checked.checks == 3


def test_halve_keeps_every_chains_later_draw_of_each_pair():
    # Draw-major: index k * C + c holds chain c's draw k; here value = 10 k + c.
    draws = (10 * torch.arange(4).view(4, 1) + torch.arange(3).view(1, 3)).reshape(1, 12, 1).float()
    assert halve(draws, 3).flatten().tolist() == [10, 11, 12, 30, 31, 32]


def test_row_diagnostics_read_the_draw_major_layout():
    """Chain c of row 0 is centred at c: R-hat huge; row 1 independent: about 1. A transposed reading would mix the
    chains and see no disagreement."""
    generator = torch.Generator().manual_seed(0)
    chains = torch.randn(2, 50, CHAINS, generator=generator)
    chains[0] += torch.arange(CHAINS)
    rhat, ess = row_diagnostics(chains.reshape(2, 50 * CHAINS, 1), CHAINS)
    assert rhat[0] > 3 and abs(rhat[1] - 1) < 0.02
    assert ess[1] > 500 and np.isfinite(ess).all()


def test_too_few_draws_are_refused():
    with pytest.raises(ValueError):
        run_until_converged(AR1Rows([0.0]), 1, CHAINS, 4, 100)
