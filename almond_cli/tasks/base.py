"""What a data set is scored on: each data set has a task that knows its metrics, baselines and figures.

A task scores; it never trains. A baseline that must be fitted by training (the Gaussian GLMM) is named by
``trained_baselines``; training fits it in the run folder and hands the fitted models to ``baselines``.
The data set to task table is ``tasks/registry.py``. The trainer calls these methods at the VAE/ALMOND boundary
and at the end of the run, and ``almond evaluate`` calls them again on a saved run.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ..data.dataset import Dataset


class Task:
    """Scoring of a fitted model. The default scores nothing and draws nothing (data with no truth)."""

    # Whether the child runs of ``trained_baselines`` are scored by this same Task object: a task that keeps what it
    # computed of a child's fit (the mixed task: the baseline's scores, seconds each) then need not compute it again.
    shares_with_baselines = False

    def score(self, model, dataset: Dataset, cfg, device) -> dict[str, float]:
        """Metrics of a fitted model, {name: float}."""
        return {}

    def trained_baselines(self, dataset: Dataset, cfg) -> dict:
        """{baseline name: the config of a run that fits it}, for baselines fitted by training; none by default."""
        return {}

    def baselines(self, model, dataset: Dataset, cfg, device, fitted: dict) -> dict[str, dict[str, float]]:
        """Metrics of the classical baselines, {baseline name: {metric: float}}.

        Args:
            model: the fitted model (its likelihood says, for example, the noise sd).
            fitted: {name: fitted model} of the ``trained_baselines`` training fitted (those it could).
        """
        return {}

    def check_log_lik(self, model, dataset: Dataset, cfg, device, num_samples: int) -> tuple:
        """(log p̂ per independent unit (n,), its Monte Carlo variance (n,)) of the training data set ``dataset``'s
        held-out rows (its training rows where none are held out), for the progress checks of
        ``training/stopping.py``: importance sampling (``model.marginal``) with ``num_samples`` draws per unit from
        ``evaluation.seed``, the same draws at every check."""
        from ..model.marginal import estimate_log_marginal

        rows = dataset.heldout if dataset.heldout is not None else dataset
        estimate = estimate_log_marginal(
            model,
            rows.x.to(device),
            num_samples,
            int(cfg.evaluation.seed),
            int(cfg.evaluation.nll_chunk),
            prior_fraction=float(cfg.evaluation.get("nll_prior_fraction", 0.0)),
            unit_index=rows.unit_index,
        )
        return estimate.log_marginal, estimate.mc_variance

    def finish_fit(self, model, dataset: Dataset, cfg, device) -> str | None:
        """Called once the ALMOND phase is over (after any parameter averaging), before the final checkpoint and
        scores: a task may move ``model``'s parameters, in place, to where its scores are meant to be read (a mixed
        model: the maximum in its fixed effects and scales). Returns a line for ``train.log``, or None; by default
        does nothing."""
        return None

    def signal_moments(self, model, dataset: Dataset):
        """(mean (P,), sd (P,)) of the data's signal u, estimated without the model's prior (for the check of a
        collapsed VAE warm start, ``training/collapse.py``), or None where the task has no such estimate."""
        return None

    def snapshot(self, model, dataset: Dataset, cfg, device) -> dict | None:
        """Small tensors kept in the checkpoint at the end of the VAE phase, for the final figures."""
        return None

    def figures(
        self, run_dir: Path, model, dataset: Dataset, cfg, device, summary: dict, vae_snapshot: dict | None
    ) -> None:
        """Writes the task's figures into ``run_dir / "figures"``."""


def gaussian_baseline_config(cfg, decoder_target: str, name: str):
    """A parent run's config for its Gaussian baseline child (``Task.trained_baselines``): the same run with the
    decoder ``decoder_target`` (a linear one: Gaussian random effects), no baseline of its own and no resume, named
    ``<experiment>/<name>``; a plain DictConfig."""
    child = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    child.decoder = {"_target_": decoder_target}
    child.data.gaussian_baseline = False
    child.resume = None
    child.experiment_name = f"{cfg.experiment_name}/{name}"
    return child
