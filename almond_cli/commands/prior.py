"""``almond prior <run folder> [n=... grid=... seed=...]``: the fitted prior as numbers and a figure.

Writes into a fresh ``<run folder>/prior/<timestamp>/`` (the run's own files stay untouched):

- ``prior.csv``: for each coordinate of u = h(z), a grid of u with the fitted density and CDF;
- ``prior_summary.csv``: per coordinate, the mean, sd, skewness and the 1, 5, 10, 25, 50, 75, 90, 95 and 99 %
  quantiles, and which method gave them (exact for a one-dimensional latent, see ``tasks/prior_summary.py``);
- ``prior_dependence.csv`` (two or more coordinates): Pearson correlation and Kendall's tau of every pair;
- ``figures/prior.png``: density and CDF per coordinate, with the truth overlaid where it is known.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ..atomic import write_text_atomic
from ..model.model import prior_draws
from ..tasks.figures import plt, save_figure
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


def prior_figure(result: dict, truth, path: Path) -> None:
    """Density (top) and CDF (bottom) of every coordinate; the true prior's where ``truth`` is known."""
    coordinates = sorted({row[0] for row in result["grid"]})
    figure, axes = plt.subplots(2, len(coordinates), figsize=(4.2 * len(coordinates), 6.0), squeeze=False)
    for column, p in enumerate(coordinates):
        rows = [row for row in result["grid"] if row[0] == p]
        u = torch.tensor([row[1] for row in rows], dtype=torch.float64)
        axes[0][column].plot(u.numpy(), [row[2] for row in rows], color="tab:blue", label="fitted")
        axes[1][column].plot(u.numpy(), [row[3] for row in rows], color="tab:blue", label="fitted")
        if truth is not None:
            axes[0][column].plot(u.numpy(), truth.pdf(u).numpy(), color="black", lw=1.0, ls="--", label="truth")
            axes[1][column].plot(u.numpy(), truth.cdf(u).numpy(), color="black", lw=1.0, ls="--", label="truth")
        axes[0][column].set_title(f"u{p}: {result['summary'][p]['method'].split(' (')[0]}", fontsize=9)
        axes[1][column].set_xlabel(f"u{p}")
    axes[0][0].set_ylabel("density")
    axes[1][0].set_ylabel("CDF")
    axes[0][0].legend(fontsize=8, frameon=False)
    figure.suptitle("fitted prior: u = h(z), z ~ N(0, I)")
    save_figure(figure, path)


def prior(
    run_dir: Path, n: int = 10_000, grid: int = 1001, seed: int = 0, device: str = "auto", threads: int | None = None
) -> Path:
    """Writes the fitted prior of ``run_dir`` into ``<run>/prior/<timestamp>/``; returns that folder."""
    run = load_run("prior", run_dir, device, threads)
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
    prior_figure(
        result, truth if truth is not None and hasattr(truth, "pdf") else None, folder / "figures" / "prior.png"
    )
    for row in result["summary"]:
        print(
            f"u{row['coordinate']}: mean {row['mean']:.4f}, sd {row['sd']:.4f}, skewness {row['skewness']:.3f}, "
            f"median {row['q50']:.4f}, 90% interval [{row['q5']:.4f}, {row['q95']:.4f}] ({row['method']})"
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
