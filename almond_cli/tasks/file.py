"""Scoring of a model fitted to ``data=file``: the learned latent distribution, and KS/W1 when the truth is known.

With ``data.truth_path`` and one latent value per row, the many-normal-means scores of
``tasks/normal_means.py`` apply unchanged, with the empirical distribution of the true values in place of the
simulation's prior (two-sample KS and W1). Without it, the task reports the mean and sd of the learned
latent distribution and draws its histogram beside the data's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .base import Task
from .figures import latent_density_figure, method_panels, plt, save_figure
from .metrics import evaluation_generator, latent_draws, train_likelihood
from .normal_means import GaussianBaselinesMixin, distribution_scores, likelihood_comparison


class FileTask(GaussianBaselinesMixin, Task):
    """KS/W1 against the true values where ``data.truth_path`` gives them; latent mean and sd, and the training
    rows' ``train_nll``, always."""

    def score(self, model, dataset, cfg, device):
        draws = latent_draws(model, cfg, device)
        scores = {}
        if dataset.prior is not None and draws.shape[1] == 1:
            scores.update(distribution_scores(draws[:, 0], dataset.prior))
        if draws.shape[1] == 1:
            scores.update({"u_mean": float(draws.double().mean()), "u_sd": float(draws.double().std())})
        return {**scores, **train_likelihood(model, dataset, cfg, device)}

    def baselines(self, model, dataset, cfg, device, fitted):
        priors = self._baseline_priors(model, dataset)
        likelihoods = likelihood_comparison(model, dataset, cfg, device, priors)
        results = {}
        for name, fit in priors.items():
            draws = fit.sample(cfg.evaluation.num_draws, evaluation_generator(cfg))
            scores = distribution_scores(draws, dataset.prior) if dataset.prior is not None else {}
            results[name] = {**scores, "u_mean": float(draws.mean()), "u_sd": float(draws.std()), **likelihoods[name]}
        return results

    def snapshot(self, model, dataset, cfg, device):
        return {"draws": latent_draws(model, cfg, device)}

    def figures(self, run_dir, model, dataset, cfg, device, summary, vae_snapshot):
        final = latent_draws(model, cfg, device)
        if final.shape[1] != 1:
            return  # a multivariate latent distribution has no one-panel picture here
        baselines = {
            name: fit.sample(cfg.evaluation.num_draws, evaluation_generator(cfg))
            for name, fit in self._baseline_priors(model, dataset).items()
        }
        panels = method_panels(
            summary, None if vae_snapshot is None else vae_snapshot["draws"][:, 0], final[:, 0], baselines
        )
        folder = Path(run_dir) / "figures"
        noise_sd = model.likelihood.noise_sd(dataset.x)
        if dataset.prior is not None and noise_sd is not None:
            latent_density_figure(panels, dataset.prior, noise_sd, folder / "latent_density.png")
        else:
            latent_histogram_figure(
                panels, model.likelihood.observations(dataset.x)[:, 0], folder / "latent_distribution.png"
            )


def latent_histogram_figure(panels: dict, x: torch.Tensor, path: Path) -> None:
    """One panel per method: histogram of its draws of u beside the histogram of the data x (n,)."""
    x = x.double()
    lo = min(float(torch.quantile(d.double(), 0.001)) for d, _ in panels.values())
    hi = max(float(torch.quantile(d.double(), 0.999)) for d, _ in panels.values())
    lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if not math.isfinite(lo) or not hi > lo:
        lo, hi = lo - 1.0, lo + 1.0
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), sharey=True, squeeze=False)
    for axis, (name, (draws, _metrics)) in zip(axes[0], panels.items()):
        axis.hist(
            draws.double().clamp(lo, hi).numpy(),
            bins=80,
            range=(lo, hi),
            density=True,
            color="tab:blue",
            alpha=0.45,
            label=f"{name}: u = h(z)",
        )
        axis.hist(x.numpy(), bins=60, range=(lo, hi), density=True, histtype="step", color="tab:orange", label="data x")
        axis.set_title(name)
        axis.set_xlabel("u")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(loc="upper left", fontsize=8, frameon=False)
    figure.suptitle("learned latent distribution and the data")
    save_figure(figure, path)
