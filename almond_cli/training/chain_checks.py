"""What training checks of its chains: that they are the Markov chains ALMOND averages over, and that they follow
the posterior. Every ``diagnostics.rhat_every_epochs`` ALMOND epochs and at the last one:

- **Over the trajectory.** The chains persist from epoch to epoch, so a chain's states at the ends of successive
  epochs are its real trajectory. ``ChainTrajectory`` keeps those of the first ``diagnostics.rhat_points`` data
  points over the last ``diagnostics.trajectory_epochs`` epochs; their rank-normalised split-R-hat and bulk/tail
  effective sample sizes (Vehtari et al. 2021, ``langevin.diagnostics.trajectory_convergence``) are ``rhat_max``,
  ``rhat_median``, ``ess_bulk_min``, ``ess_bulk_median`` and ``ess_tail_min``. R-hat well above 1 says the chains
  of a point have not crossed its posterior within the window: each remembers where it started, and the gradient
  rests on fewer effective draws than C. (The model moves during the window too; late in training it barely does.)
  Where a unit is several rows sharing many latents (a mixed model's table: one coordinate per level and random
  term), each coordinate counts as a point: the median is over levels, as it is over rows elsewhere, not the worst
  of a few hundred coordinates, which a healthy fit's chains exceed the alarm in (grouseticks: median 1.37, worst 3.3).
- **Against the exact posterior** (d = 1, and d = 2 on a grid): the chains of the same points against p(z | x_i) by
  quadrature, ``posterior_ks_mean`` / ``posterior_ks_max`` (per coordinate for d = 2) beside
  ``posterior_ks_reference``, what exact draws would give.

Either crossing its threshold writes a warning with the remedy to the screen and ``train.log``.
"""

from __future__ import annotations

import logging
import math

import torch

from ..langevin.diagnostics import KOLMOGOROV_MEAN, posterior_marginal_ks, trajectory_convergence
from .position import Phase

log = logging.getLogger("almond")
ALARM_FACTOR = (
    1.5  # measured: healthy runs 0.92–1.03 times the reference; ULA steps of 0.5 and 0.8 (paper 0.01) 1.4–2.1
)
# The median over points of the trajectory R-hat above which the chains barely move. Vehtari et al.'s 1.01 asks that
# every chain cross the posterior within the window; persistent chains at the paper's late step size do not over
# 50 epochs and need not (they start spread over it): measured median 1.9-2.0 (paper settings) and 1.4-1.9 (fast
# preset) on healthy runs whose chains pass the exact-posterior check, 3.8 with a step size 10x below the paper's
# late one, 6.7 with chains frozen (docs/sweeps-and-scale-out.md).
RHAT_ALARM = 3.0
POINTS_2D = 16  # a 2-d check decodes a 61² grid per point, plus one shared (a conv decoder: seconds)
MIN_DRAWS = 4  # split-R-hat halves each chain: 2 draws per half at least


class ChainTrajectory:
    """The chains of the first ``points`` data points at the end of each of the last ``window`` ALMOND epochs."""

    def __init__(self, points: int, window: int, states: torch.Tensor | None = None):
        self.points = points
        self.window = window
        self.states: list[torch.Tensor] = [] if states is None else list(states.unbind(0))[-window:]

    def record(self, chains) -> None:
        """Keeps a CPU copy of the current chains (points, C, d) of the first data points."""
        count = min(self.points, chains.positions.shape[0])
        self.states.append(chains.positions[:count].detach().to("cpu", copy=True))
        del self.states[: -self.window]

    def draws(self) -> torch.Tensor:
        """(points, C, N, d): each chain's recorded states in epoch order."""
        return torch.stack(self.states, dim=2)

    def state_dict(self) -> dict:
        return {
            "points": self.points,
            "window": self.window,
            "states": torch.stack(self.states) if self.states else None,
        }

    @classmethod
    def from_state_dict(cls, state: dict | None, points: int, window: int) -> ChainTrajectory:
        """The saved trajectory (an older checkpoint has none: it starts empty), trimmed to ``window``."""
        if not state or state.get("states") is None or state.get("points") != points:
            return cls(points, window)
        return cls(points, window, state["states"])


def check_due(run) -> bool:
    """Whether the chain checks run at the end of the current ALMOND epoch."""
    cfg, position = run.cfg, run.position
    every = cfg.diagnostics.rhat_every_epochs
    done = position.epoch + 1
    if position.phase != Phase.ALMOND or run.chains is None or not every:
        return False
    return done % every == 0 or done == cfg.schedule.almond_epochs


def periodic_rhat(run) -> dict[str, float]:
    """Records the chains' trajectory at the end of each ALMOND epoch, and returns the chain checks when due
    (every ``diagnostics.rhat_every_epochs`` epochs and at the last one; {} otherwise)."""
    if run.position.phase != Phase.ALMOND or run.chains is None or not run.cfg.diagnostics.rhat_every_epochs:
        return {}
    run.trajectory.record(run.chains)
    if not check_due(run):
        return {}
    epoch = run.position.epoch + 1
    results = {}
    per_coordinate = getattr(run, "unit_rows", None) is not None  # units of several rows: a level is a point
    if len(run.trajectory.states) >= MIN_DRAWS:
        results.update(trajectory_check(run.trajectory, epoch, per_coordinate))
    # The exact posterior is tabulated per data row; with units of several rows (run.unit_rows) it is not checked.
    if int(run.cfg.latent_dim) <= 2 and getattr(run, "unit_rows", None) is None:
        results.update(posterior_check(run, epoch))
    return results


def trajectory_check(trajectory: ChainTrajectory, epoch: int, per_coordinate: bool = False) -> dict[str, float]:
    """R-hat and ESS over the recorded trajectory, with a warning when the chains have not mixed; with
    ``per_coordinate``, each latent coordinate of each unit is a point (the module docstring)."""
    draws = trajectory.draws()  # (P, C, N, d)
    if per_coordinate:
        draws = draws.permute(0, 3, 1, 2).reshape(-1, draws.shape[1], draws.shape[2], 1)
    results = trajectory_convergence(draws.numpy())
    results["trajectory_epochs"] = len(trajectory.states)
    if results["rhat_median"] > RHAT_ALARM:
        log.warning(
            "ALMOND epoch %d: the persistent chains have not mixed over their last %d epochs (median "
            "R-hat %.3f > %.2f over the checked data points): each chain still remembers where it started, "
            "so the gradient rests on fewer effective draws than chains. More Langevin steps per update "
            "(sampler.num_steps), a larger sampler.step_size if the chains barely move, or more epochs "
            "usually help.",
            epoch,
            len(trajectory.states),
            results["rhat_median"],
            RHAT_ALARM,
        )
    return results


def posterior_check(run, epoch: int) -> dict[str, float]:
    """KS of the first ``diagnostics.rhat_points`` data points' chains against their exact posteriors."""
    count = min(int(run.cfg.diagnostics.rhat_points), run.x.shape[0])
    if int(run.cfg.latent_dim) == 2:
        count = min(count, POINTS_2D)
    indices = torch.arange(count)
    ks = posterior_marginal_ks(run.model, run.x[:count], run.chains.gather(indices))
    reference = KOLMOGOROV_MEAN / math.sqrt(run.chains.num_chains)
    results = {
        "posterior_ks_mean": float(ks.mean()),
        "posterior_ks_max": float(ks.max()),
        "posterior_ks_reference": reference,
    }
    if results["posterior_ks_mean"] > ALARM_FACTOR * reference:
        log.warning(
            "ALMOND epoch %d: the chains do not follow the exact posterior p(z | x) of the checked data "
            "points (mean KS %.3f, exact draws would give about %.3f): the gradient averages over the wrong "
            "z. More Langevin steps per update (sampler.num_steps), a smaller sampler.step_size if the chains "
            "diverge, or more epochs usually help.",
            epoch,
            results["posterior_ks_mean"],
            reference,
        )
    return results
