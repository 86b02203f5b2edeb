"""Figures written into a run folder's ``figures/`` (PNG via matplotlib's Agg backend, written atomically).

``latent_density.png`` mirrors Qiu & Wang (2019, Figure 2): for each method, a histogram of draws from the
learned latent distribution with the true prior's density and the data density overlaid.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..atomic import write_atomic  # noqa: E402
from ..data.priors import Prior  # noqa: E402


def save_figure(figure, path: Path) -> None:
    """Renders ``figure`` to PNG in memory and writes it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def method_panels(
    summary: dict, vae_draws: torch.Tensor | None, almond_draws: torch.Tensor, baseline_draws: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, dict]]:
    """The panels of a figure that sets the methods side by side, in the summary table's order: the VAE warm start
    (where its snapshot was kept), ALMOND, then each baseline, each with its draws and its row of ``summary``.

    Args:
        summary: the run's summary (``vae``, ``almond``, ``baselines``); a missing row gives empty metrics.
        vae_draws: the VAE's draws from its snapshot, or None.
        almond_draws: ALMOND's draws.
        baseline_draws: {baseline name: its draws}.

    Returns:
        {method name: (draws, metrics)}.
    """
    panels = {} if vae_draws is None else {"vae": (vae_draws, summary.get("vae", {}))}
    panels["almond"] = (almond_draws, summary.get("almond", {}))
    for name, draws in baseline_draws.items():
        panels[name] = (draws, summary.get("baselines", {}).get(name, {}))
    return panels


def marginal_data_density(prior: Prior, noise_sd: float, grid: torch.Tensor) -> torch.Tensor:
    """Density of x = mu + noise_sd · N(0, 1), mu ~ prior, on ``grid``, by numerical convolution."""
    lower, upper = prior.bulk()
    mu = torch.linspace(lower, upper, 4001, dtype=torch.float64)
    weights = prior.pdf(mu)
    kernel = torch.exp(-0.5 * ((grid.unsqueeze(1) - mu) / noise_sd) ** 2) / (noise_sd * (2 * torch.pi) ** 0.5)
    return torch.trapezoid(kernel * weights, mu, dim=1)


def latent_density_figure(
    panels: dict[str, tuple[torch.Tensor, dict]], prior: Prior, noise_sd: float, path: Path
) -> None:
    """One panel per method: histogram of its draws, true prior density, data density, KS and W1.

    Args:
        panels: method name -> (draws (n,), metrics with ``ks`` and ``w1``).
        prior: the true prior.
        noise_sd: the measurement noise, for the data density.
        path: where the PNG goes.
    """
    all_draws = torch.cat([draws.double().flatten() for draws, _ in panels.values()])
    lo = float(torch.quantile(all_draws, 0.001)) - noise_sd
    hi = float(torch.quantile(all_draws, 0.999)) + noise_sd
    grid = torch.linspace(lo, hi, 600, dtype=torch.float64)
    prior_density = prior.pdf(grid)
    data_density = marginal_data_density(prior, noise_sd, grid)
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), sharey=True, squeeze=False)
    for axis, (name, (draws, metrics)) in zip(axes[0], panels.items()):
        axis.hist(
            draws.double().clamp(lo, hi).numpy(),
            bins=80,
            range=(lo, hi),
            density=True,
            color="tab:blue",
            alpha=0.45,
            label=f"{name} draws",
        )
        axis.plot(grid.numpy(), prior_density.numpy(), color="black", lw=1.6, label="true prior")
        axis.plot(grid.numpy(), data_density.numpy(), color="tab:orange", lw=1.3, ls="--", label="data density")
        axis.set_title(name)
        axis.set_xlabel("u")
        axis.text(
            0.97,
            0.95,
            f"KS {metrics.get('ks', float('nan')):.3f}\nW1 {metrics.get('w1', float('nan')):.3f}",
            transform=axis.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"),
        )
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(loc="upper left", fontsize=8, frameon=False)
    figure.suptitle(f"learned latent distribution vs true {prior.name} prior")
    save_figure(figure, path)
