"""When a training phase is done (``schedule.vae_epochs`` / ``schedule.almond_epochs`` = auto), and whether a run was
still improving when it ended.

**The checks.** Every ``schedule.auto.every`` epochs, log p(x_i) of the held-out rows (the training rows where none
are held out) is estimated by importance sampling (``model.marginal``, ``schedule.auto.nll_samples`` draws per row,
row i's draws from ``evaluation.seed`` + i: the same draws at every check, so two checks differ by the model alone
and their per-row difference is a paired comparison).

**The rule** (``ProgressChecks``). The first check is the incumbent. A later check whose mean per-row gain over the
incumbent, mean_i(l_i − l_i^inc), exceeds the standard error of that paired gain, sd_i(l_i − l_i^inc) / sqrt(n),
is a significant gain and becomes the incumbent. A phase under ``auto`` is done once ``schedule.auto.window`` checks
in a row have brought no significant gain, or at ``schedule.auto.max_<phase>_epochs``. The comparison is with the
incumbent, not with the previous check, so a slow rise that no single interval shows still adds up until it counts.
(With fewer than two units, as a mixed model's one table, the standard error is that of the two Monte Carlo
estimates instead, ``MarginalEstimate.mc_variance``.)

**Plateaus.** Under auto the ALMOND phase meets its first ``schedule.auto.halvings`` plateaus (``window`` checks
without a significant gain) by halving its learning rate instead of stopping (``ProgressChecks.halve``), and stops at
the next. A constant rate leaves the parameters jittering around the fit, and the checks then stop on the jitter:
on batting averages (five held-out fifths) two halvings brought four of five fits within 0.01 nats of the NPMLE
and the best hitter within 0.01 of its posterior mean, against three without. The VAE phase stops at its first.

**Still improving.** A run was still improving at its end if its last check beats the check ``window`` checks
before it (``window`` x ``every`` epochs earlier) by more than twice the standard error of that paired gain. One
test at two standard errors, not the rule's one, because it raises a warning: on a plateau it fires 2 % of the
time, where "any of the last ``window`` checks beat the best by one SE" would fire about half the time. A
fixed-epoch ALMOND phase makes two checks for this verdict alone, ``window`` x ``every`` epochs apart and the
second at its end; a run that auto stopped for want of a gain is not still improving. The warning gives the command that extends the run
(``still_improving_message``).

Using the held-out rows to decide when to stop touches them once per check: ``heldout_nll`` is then a little
optimistic, as after any early stopping on a validation set; the selection is among a handful of nested fits, so
the effect is small next to its standard error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..config import AUTO

# What ended a phase (summary.json timing.stopped_because).
FIXED, NO_GAIN, CAP = "epochs", "no_gain", "cap"


@dataclass
class Check:
    """One check: after ``epoch`` epochs of the phase, −log p per row ``nll`` ± ``nll_se``, and the paired ``gain``
    in log p per row over the incumbent ± ``gain_se`` (NaN at the first check); ``significant``: gain > gain_se."""

    epoch: int
    nll: float
    nll_se: float
    gain: float
    gain_se: float
    significant: bool


def paired_gain(log_lik: Tensor, incumbent: Tensor, mc_variance: Tensor, incumbent_mc: Tensor) -> tuple[float, float]:
    """(mean gain, its standard error) of per-row log-likelihoods ``log_lik`` (n,) over ``incumbent`` (n,): the SE
    over rows of the paired differences; with n < 2, that of the two Monte Carlo estimates (``*_mc`` (n,))."""
    difference = (log_lik - incumbent).double()
    count = difference.numel()
    if count >= 2:
        return float(difference.mean()), float(difference.std()) / math.sqrt(count)
    return float(difference.mean()), float((mc_variance + incumbent_mc).double().sum().sqrt()) / max(count, 1)


class ProgressChecks:
    """The rule of the module docstring as a small state machine over the checks of one phase.

    Args:
        window: checks in a row without a significant gain after which the phase is done.
    """

    def __init__(self, window: int):
        self.window = int(window)
        self.incumbent: Tensor | None = None
        self.incumbent_mc: Tensor | None = None
        self.incumbent_epoch = 0
        self.since_gain = 0  # checks since the incumbent was set
        self.gains = 0  # significant gains after the first check
        self.halvings = 0  # plateaus met with a halved learning rate instead of a stop (``halve``)
        self.checks: list[Check] = []
        self.recent: list[tuple[Tensor, Tensor]] = []  # (log_lik, mc_variance) of the last window + 1 checks

    def add(self, log_lik: Tensor, epoch: int, mc_variance: Tensor | None = None) -> Check:
        """Records the check after ``epoch`` epochs: per-row log p̂ ``log_lik`` (n,) and their Monte Carlo
        variances ``mc_variance`` (n,; zeros if None); returns it."""
        log_lik = log_lik.detach().double().cpu()
        mc_variance = torch.zeros_like(log_lik) if mc_variance is None else mc_variance.detach().double().cpu()
        self.recent = (self.recent + [(log_lik, mc_variance)])[-(self.window + 1) :]
        count = log_lik.numel()
        nll = float(-log_lik.mean())
        nll_se = float(log_lik.std()) / math.sqrt(count) if count > 1 else float("nan")
        if self.incumbent is None:
            gain, gain_se, significant = float("nan"), float("nan"), False
            self._take(log_lik, mc_variance, epoch)
        else:
            gain, gain_se = paired_gain(log_lik, self.incumbent, mc_variance, self.incumbent_mc)
            significant = gain > gain_se
            if significant:
                self.gains += 1
                self._take(log_lik, mc_variance, epoch)
            else:
                self.since_gain += 1
        check = Check(epoch, nll, nll_se, gain, gain_se, significant)
        self.checks.append(check)
        return check

    def _take(self, log_lik: Tensor, mc_variance: Tensor, epoch: int) -> None:
        self.incumbent, self.incumbent_mc, self.incumbent_epoch, self.since_gain = log_lik, mc_variance, epoch, 0

    def done(self) -> bool:
        """Whether ``window`` checks in a row have brought no significant gain."""
        return self.incumbent is not None and self.since_gain >= self.window

    def halve(self) -> None:
        """Meets a plateau (``done``) with a halved learning rate instead of a stop: the next ``window`` checks get
        their chance to beat the incumbent at the smaller rate."""
        self.halvings += 1
        self.since_gain = 0

    @property
    def rate_factor(self) -> float:
        """The learning rate's factor after the plateaus met so far: 0.5 ** halvings."""
        return 0.5**self.halvings

    def recent_gain(self) -> tuple[int, float, float] | None:
        """(epoch of the reference, gain, gain_se): the last check's paired gain over the check up to ``window``
        checks before it; None with fewer than two checks."""
        if len(self.recent) < 2:
            return None
        (reference, reference_mc), (last, last_mc) = self.recent[0], self.recent[-1]
        gain, gain_se = paired_gain(last, reference, last_mc, reference_mc)
        return self.checks[-len(self.recent)].epoch, gain, gain_se

    def still_improving(self) -> bool:
        """Whether the last check beats the one up to ``window`` checks before it by more than two standard errors."""
        found = self.recent_gain()
        return found is not None and found[1] > 2.0 * found[2]

    def state_dict(self) -> dict:
        return {
            "window": self.window,
            "incumbent": self.incumbent,
            "incumbent_mc": self.incumbent_mc,
            "incumbent_epoch": self.incumbent_epoch,
            "since_gain": self.since_gain,
            "gains": self.gains,
            "halvings": self.halvings,
            "checks": [asdict(check) for check in self.checks],
            "recent": [torch.stack(pair) for pair in self.recent],
        }

    @classmethod
    def from_state_dict(cls, state: dict | None, window: int) -> ProgressChecks:
        """The saved checks (none in a checkpoint written before them), judged with today's ``window``."""
        checks = cls(window)
        if state:
            checks.incumbent, checks.incumbent_mc = state["incumbent"], state["incumbent_mc"]
            checks.incumbent_epoch, checks.since_gain = int(state["incumbent_epoch"]), int(state["since_gain"])
            checks.gains = int(state["gains"])
            checks.halvings = int(state.get("halvings", 0))  # a checkpoint saved before halvings: none
            checks.checks = [Check(**check) for check in state["checks"]]
            checks.recent = [(pair[0], pair[1]) for pair in state.get("recent", [])][-(checks.window + 1) :]
        return checks


def epoch_limit(schedule, phase: str) -> int:
    """The most epochs phase ``phase`` (``vae`` or ``almond``) runs: its count, or under auto its cap."""
    value = schedule[f"{phase}_epochs"]
    if value == AUTO:
        return int(auto_settings(schedule).get(f"max_{phase}_epochs"))
    return int(value)


def auto_settings(schedule) -> dict:
    """``schedule.auto`` as a plain dict, its defaults where a run saved before the key lacks it."""
    from ..config import AutoScheduleConfig

    settings = asdict(AutoScheduleConfig())
    saved = schedule.get("auto")
    if saved is not None:
        settings.update({key: saved[key] for key in settings if key in saved})
    return settings


def check_epochs(schedule, phase: str) -> list[int] | None:
    """The epochs (counted from 1) after which phase ``phase`` checks, or None for every multiple of
    ``schedule.auto.every`` (auto). A fixed ALMOND phase of N epochs checks twice, for the still-improving verdict
    alone: at N − window·every (or the earliest N − j·every >= 1) and at N, the two checks that verdict compares (a
    mixed model's check takes seconds); a fixed VAE phase never."""
    settings = auto_settings(schedule)
    if schedule[f"{phase}_epochs"] == AUTO:
        return None
    if phase != "almond":
        return []
    total, every, window = int(schedule.almond_epochs), int(settings["every"]), int(settings["window"])
    epochs = [total - j * every for j in range(window, -1, -1) if total - j * every >= 1]
    return sorted({epochs[0], epochs[-1]})


def check_due(schedule, phase: str, done: int) -> bool:
    """Whether phase ``phase`` checks after its epoch ``done`` (counted from 1)."""
    epochs = check_epochs(schedule, phase)
    if epochs is None:
        return done % int(auto_settings(schedule)["every"]) == 0 or done == epoch_limit(schedule, phase)
    return done in epochs


def evaluate_check(task, model, dataset, cfg, device) -> tuple[Tensor, Tensor]:
    """(log p̂ per unit (n,), its Monte Carlo variance (n,)) of the training data set ``dataset``'s held-out rows (its
    training rows where none are held out) under ``model`` (``Task.check_log_lik``:
    importance sampling with ``schedule.auto.nll_samples`` draws per row from ``evaluation.seed``, on its own generator,
    training's streams untouched; a mixed model's exact per-component log-likelihood)."""
    return task.check_log_lik(model, dataset, cfg, device, int(auto_settings(cfg.schedule)["nll_samples"]))


def suggested_epochs(epochs_run: int) -> int:
    """The ALMOND epoch count the still-improving warning suggests: twice what ran, rounded up to a hundred."""
    return max(100, int(math.ceil(2 * epochs_run / 100.0)) * 100)


def still_improving_message(run_dir, checks: ProgressChecks, epochs_run: int, rows: str) -> str:
    """The warning of a run whose ALMOND phase was still improving at its end, with the command that extends it.

    Args:
        run_dir: the run folder.
        checks: the phase's checks (``still_improving()`` true).
        epochs_run: ALMOND epochs run.
        rows: which rows were checked ("held-out" or "training").
    """
    since, gain, gain_se = checks.recent_gain()
    return (
        f"ALMOND was still improving when it stopped after {epochs_run} epochs: since epoch {since} the {rows} rows' "
        f"log-likelihood rose by {gain:.4f} ± {gain_se:.4f} nats per row (more than twice its standard error). "
        f"Train on with: almond train resume={run_dir} schedule.almond_epochs={suggested_epochs(epochs_run)}"
    )
