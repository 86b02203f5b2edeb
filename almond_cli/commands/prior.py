"""``almond prior <run folder> [n=... grid=... seed=...]``: the fitted prior as numbers and a figure.

Writes into a fresh ``<run folder>/prior/<timestamp>/`` (the run's own files stay untouched):

- ``prior.csv``: for each coordinate of u = h(z), a grid of u with the fitted density and CDF;
- ``prior_summary.csv``: per coordinate, the mean, sd, skewness and the 1, 5, 10, 25, 50, 75, 90, 95 and 99 %
  quantiles, and which method gave them (exact for a one-dimensional latent, see ``tasks/prior_summary.py``);
- ``prior_dependence.csv`` (two or more coordinates): Pearson correlation and Kendall's tau of every pair;
- ``figures/prior.png``: density and CDF per coordinate, with the truth overlaid where it is known; for Gaussian
  measurements with one value per row (a 1-d prior), the classical empirical-Bayes fits to the same training rows
  overlaid too (the maximum-likelihood normal prior's density and CDF, the NPMLE's atoms and step CDF,
  ``tasks/empirical_bayes.py``) with the data's histogram and empirical CDF: the fits compared at a glance.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ..atomic import write_text_atomic
from ..data.priors import DiscretePrior, NormalPrior, Prior
from ..model.mixed import MixedModel
from ..model.model import prior_draws
from ..tasks.figures import plt, save_figure
from ..tasks.mixed import FactorLaw
from ..tasks.normal_means import baseline_priors
from ..tasks.prior_summary import summarise_prior
from ..training.run_folder import RunFolder, load_run
from .arguments import DEVICE, THREADS, Argument, Command, at_least

ARGUMENTS = {
    "n": Argument(
        int,
        10_000,
        at_least(100),
        "draws of u = h(z) for the dependence of coordinates (and the marginals "
        "when the latent has d >= 2), an integer >= 100",
    ),
    "grid": Argument(int, 1001, at_least(11), "points of the u grid per coordinate in prior.csv, an integer >= 11"),
    "seed": Argument(int, 0, help="seed of the draws, an integer"),
    "device": DEVICE,
    "threads": THREADS,
}


def _csv(header: list[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# The empirical-Bayes fits overlaid on the fitted prior, by their summary.json names: label and colour.
BASELINE_STYLE = {"normal_eb": ("normal EB (ML)", "tab:green"), "npmle": ("NPMLE", "tab:red")}


def _extent(fit: Prior) -> tuple[float, float]:
    """Where a baseline's mass lies: a discrete prior's atoms, a normal prior's mean ± 4 sd."""
    if isinstance(fit, DiscretePrior):
        return fit.bulk()
    return fit.mean - 4.0 * fit.sd, fit.mean + 4.0 * fit.sd


def _plot_baseline(density_axis, mass_axis, cdf_axis, name: str, fit: Prior, grid: torch.Tensor) -> None:
    """A baseline's density and CDF on ``grid`` (M,): a normal prior's curves (a vertical line where tau = 0, a
    point mass), a discrete prior's atoms (height: their mass, on ``mass_axis``, the density axis's twin) and step
    CDF."""
    label, colour = BASELINE_STYLE.get(name, (name, "tab:gray"))
    u = grid.numpy()
    if isinstance(fit, DiscretePrior):
        mass_axis.vlines(fit.support.numpy(), 0.0, fit.weights.numpy(), color=colour, lw=1.0, alpha=0.8, label=label)
        mass_axis.set_ylim(0.0, 1.05 * float(fit.weights.max()))
        mass_axis.set_ylabel(f"{label} atom mass", fontsize=8)
        cdf_axis.step(u, fit.cdf(grid).numpy(), where="post", color=colour, lw=1.0, label=label)
    elif isinstance(fit, NormalPrior) and fit.sd == 0.0:
        density_axis.axvline(fit.mean, color=colour, lw=1.2, ls="-.", label=f"{label}: point mass")
        cdf_axis.step(u, (grid >= fit.mean).double().numpy(), where="post", color=colour, lw=1.2, ls="-.", label=label)
    else:
        density_axis.plot(u, fit.pdf(grid).numpy(), color=colour, lw=1.2, ls="-.", label=label)
        cdf_axis.plot(u, fit.cdf(grid).numpy(), color=colour, lw=1.2, ls="-.", label=label)


def prior_figure(
    result: dict, truth, path: Path, baselines: dict[str, Prior] | None = None, data: torch.Tensor | None = None
) -> None:
    """Density (top) and CDF (bottom) of every coordinate; the true prior's where ``truth`` is known.

    Args:
        result: ``summarise_prior``'s result (its ``grid`` rows: coordinate, u, density, CDF).
        truth: the true prior (with ``pdf`` and ``cdf``), or None.
        path: where the PNG goes.
        baselines: for a 1-d prior, empirical-Bayes fits to overlay, {summary name: prior}; none if empty.
        data: for a 1-d prior, the measurements x (n,) whose histogram and empirical CDF are overlaid, or None.
    """
    coordinates = sorted({row[0] for row in result["grid"]})
    overlay = len(coordinates) == 1
    figure, axes = plt.subplots(2, len(coordinates), figsize=(4.2 * len(coordinates), 6.0), squeeze=False)
    if overlay and (baselines or data is not None):
        figure.set_size_inches(7.0, 7.0)
    mass_axis = None
    for column, p in enumerate(coordinates):
        rows = [row for row in result["grid"] if row[0] == p]
        u = torch.tensor([row[1] for row in rows], dtype=torch.float64)
        density_axis, cdf_axis = axes[0][column], axes[1][column]
        if overlay and data is not None:
            # The data are u plus noise: wider than the prior, drawn beneath it for the eye, not as an estimate.
            x = data.double()
            density_axis.hist(x.numpy(), bins=50, density=True, color="0.8", label=f"data x (n = {x.numel()})")
            cdf_axis.step(
                x.sort().values.numpy(),
                (torch.arange(1, x.numel() + 1) / x.numel()).numpy(),
                where="post",
                color="0.6",
                lw=1.0,
                label="data x",
            )
        density_axis.plot(u.numpy(), [row[2] for row in rows], color="tab:blue", label="fitted")
        cdf_axis.plot(u.numpy(), [row[3] for row in rows], color="tab:blue", label="fitted")
        if truth is not None:
            density_axis.plot(u.numpy(), truth.pdf(u).numpy(), color="black", lw=1.0, ls="--", label="truth")
            cdf_axis.plot(u.numpy(), truth.cdf(u).numpy(), color="black", lw=1.0, ls="--", label="truth")
        if overlay and baselines:
            extents = [_extent(fit) for fit in baselines.values()]
            low, high = min([float(u.min())] + [e[0] for e in extents]), max([float(u.max())] + [e[1] for e in extents])
            grid = torch.linspace(low, high, 2001, dtype=torch.float64)
            discrete = any(isinstance(fit, DiscretePrior) for fit in baselines.values())
            mass_axis = density_axis.twinx() if discrete else None
            for name, fit in baselines.items():
                _plot_baseline(density_axis, mass_axis, cdf_axis, name, fit, grid)
        density_axis.set_title(f"u{p}: {result['summary'][p]['method'].split(' (')[0]}", fontsize=9)
        cdf_axis.set_xlabel(f"u{p}")
    axes[0][0].set_ylabel("density")
    axes[1][0].set_ylabel("CDF")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if mass_axis is not None:  # the NPMLE's atoms live on the twin of the (one) density axis: one legend for both
        more_handles, more_labels = mass_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes[0][0].legend(handles, labels, fontsize=8, frameon=False)
    if overlay and baselines:
        axes[1][0].legend(fontsize=8, frameon=False, loc="lower right")
        figure.suptitle("fitted prior u = h(z) beside the empirical-Bayes fits to the same rows")
    else:
        figure.suptitle("fitted prior: u = h(z), z ~ N(0, I)")
    save_figure(figure, path)


def prior(
    run_dir: Path, n: int = 10_000, grid: int = 1001, seed: int = 0, device: str = "auto", threads: int | None = None
) -> Path:
    """Writes the fitted prior of ``run_dir`` into ``<run>/prior/<timestamp>/``; returns that folder."""
    run = load_run("prior", run_dir, device, threads)
    if isinstance(run.model, MixedModel):
        return _mixed_prior(run, n, grid, seed)
    latent_dim = int(run.cfg.latent_dim)
    draws = prior_draws(run.model.decoder, latent_dim, n, torch.Generator().manual_seed(seed), run.device)
    result = summarise_prior(run.model.decoder, latent_dim, draws, grid, run.device)
    folder = run.folder.new_output_folder(RunFolder.PRIOR)
    write_text_atomic(
        folder / "prior.csv",
        _csv(
            ["coordinate", "u", "density", "cdf"],
            [(p, f"{u:.8g}", f"{d:.8g}", f"{c:.8g}") for p, u, d, c in result["grid"]],
        ),
    )
    keys = list(result["summary"][0])
    write_text_atomic(
        folder / "prior_summary.csv",
        _csv(
            keys, [[row[k] if isinstance(row[k], str) else f"{row[k]:.8g}" for k in keys] for row in result["summary"]]
        ),
    )
    if result["dependence"]:
        keys = list(result["dependence"][0])
        write_text_atomic(
            folder / "prior_dependence.csv",
            _csv(keys, [[f"{row[k]:.8g}" for k in keys] for row in result["dependence"]]),
        )
    truth = run.dataset.prior
    likelihood = run.model.likelihood
    # The baselines of the run's own summary: fitted to the training rows (Gaussian, one value per row).
    baselines = baseline_priors(likelihood, run.dataset) if latent_dim == 1 else {}
    prior_figure(
        result,
        truth if truth is not None and hasattr(truth, "pdf") else None,
        folder / "figures" / "prior.png",
        baselines,
        likelihood.observations(run.dataset.x)[:, 0] if baselines else None,
    )
    for row in result["summary"]:
        print(
            f"u{row['coordinate']}: mean {row['mean']:.4f}, sd {row['sd']:.4f}, skewness {row['skewness']:.3f}, "
            f"median {row['q50']:.4f}, 90% interval [{row['q5']:.4f}, {row['q95']:.4f}] ({row['method']})"
        )
    for name, fit in baselines.items():
        mean = fit.mean if isinstance(fit, NormalPrior) else float((fit.weights * fit.support).sum())
        variance = fit.sd**2 if isinstance(fit, NormalPrior) else (fit.weights * (fit.support - mean).square()).sum()
        sd = float(variance) ** 0.5
        what = "normal prior by maximum likelihood" if isinstance(fit, NormalPrior) else f"{fit.support.numel()} atoms"
        print(f"{BASELINE_STYLE.get(name, (name,))[0]}: mean {mean:.4f}, sd {sd:.4f} ({what})")
    print(f"written to {folder}")
    return folder


def _mixed_prior(run, n: int, grid: int, seed: int) -> Path:
    """``almond prior`` of a mixed-model run: each grouping factor's random-effect law, as for any run's prior (its
    grid, summary and figure), one factor after another; the files carry the factor's name."""
    folder = run.folder.new_output_folder(RunFolder.PRIOR)
    grid_rows, summary_rows = [], []
    for index, block in enumerate(run.model.layout.blocks):
        law = FactorLaw(run.model.decoder, index)
        draws = prior_draws(law, block.size, n, torch.Generator().manual_seed(seed), run.device)
        result = summarise_prior(law, block.size, draws, grid, run.device)
        grid_rows += [
            (block.factor, block.terms[p], f"{u:.8g}", f"{d:.8g}", f"{c:.8g}") for p, u, d, c in result["grid"]
        ]
        for row in result["summary"]:
            term = block.terms[int(row["coordinate"])]
            summary_rows.append({"factor": block.factor, "term": term, **row})
            print(
                f"{block.factor} {term}: mean {row['mean']:.4f}, sd {row['sd']:.4f}, skewness {row['skewness']:.3f}, "
                f"90% interval [{row['q5']:.4f}, {row['q95']:.4f}] (uncentred: the matching fixed effect holds the mean)"
            )
        name = "".join(c if c.isalnum() else "_" for c in block.factor)
        prior_figure(result, None, folder / "figures" / f"prior_{name}.png")
    write_text_atomic(folder / "prior.csv", _csv(["factor", "term", "u", "density", "cdf"], grid_rows))
    keys = list(summary_rows[0])
    write_text_atomic(
        folder / "prior_summary.csv",
        _csv(keys, [[row[k] if isinstance(row[k], str) else f"{row[k]:.8g}" for k in keys] for row in summary_rows]),
    )
    print(f"written to {folder}")
    return folder


COMMAND = Command(
    "prior",
    "run folder",
    "outputs/DATE/TIME",
    "Writes the fitted prior of u = h(z) as numbers into <run folder>/prior/<timestamp>/: prior.csv "
    "(density and CDF on a grid), prior_summary.csv (mean, sd, skewness, quantiles), "
    "prior_dependence.csv (correlations and Kendall's tau of coordinate pairs) and figures/prior.png.",
    ARGUMENTS,
    prior,
)
