"""``figures/random_effects.png`` of a GLMM run (after Qiu & Wang 2019, Figure 3).

One panel per method with the histogram of the first random-effect coordinate's draws and the true marginal
density; where the random effect has two or more coordinates, a last panel with each method's estimated Kendall
lambda function of the first two coordinates and the true Clayton lambda (a 1-d random effect has no pair, so no
such panel).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..data.clayton import clayton_lambda, empirical_lambda
from ..data.priors import Prior
from .figures import plt, save_figure

COLOURS = {"vae": "tab:orange", "almond": "tab:blue", "gaussian_glmm": "tab:green"}


def random_effects_figure(
    panels: dict[str, tuple[Tensor, dict]], prior: Prior | None, theta: float | None, path: Path
) -> None:
    """Writes the figure.

    Args:
        panels: method name -> (draws (N, q), metrics dict, read for ``ks`` and ``w1`` if present).
        prior: the true marginal, or None (a user's data: no truth drawn).
        theta: the true Clayton parameter, or None.
        path: where the PNG goes.
    """
    first = torch.cat([draws[:, 0].double() for draws, _ in panels.values()])
    lo, hi = float(torch.quantile(first, 0.001)), float(torch.quantile(first, 0.999))
    if prior is not None:
        lo = min(lo, prior.bulk()[0] - 0.5)
    grid = torch.linspace(lo, hi, 600, dtype=torch.float64)
    paired = any(draws.shape[1] >= 2 for draws, _ in panels.values())
    columns = len(panels) + int(paired)
    figure, axes = plt.subplots(1, columns, figsize=(4.0 * columns, 3.4), squeeze=False)
    for axis, (name, (draws, metrics)) in zip(axes[0], panels.items()):
        axis.hist(
            draws[:, 0].double().clamp(lo, hi).numpy(),
            bins=80,
            range=(lo, hi),
            density=True,
            color=COLOURS.get(name, "tab:gray"),
            alpha=0.45,
            label=f"{name} draws",
        )
        if prior is not None:
            axis.plot(grid.numpy(), prior.pdf(grid).numpy(), color="black", lw=1.6, label="true marginal")
        axis.set_title(name)
        axis.set_xlabel("u_1")
        if "ks" in metrics:
            axis.text(
                0.97,
                0.95,
                f"KS {metrics['ks']:.3f}\nW1 {metrics['w1']:.3f}",
                transform=axis.transAxes,
                ha="right",
                va="top",
                fontsize=9,
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"),
            )
        axis.legend(loc="upper left", fontsize=8, frameon=False)
    if paired:
        kendall_panel(axes[0][-1], panels, theta)
    figure.suptitle(
        "fitted random-effects distribution vs truth" if prior is not None else "fitted random-effects distribution"
    )
    save_figure(figure, path)


def kendall_panel(axis, panels: dict[str, tuple[Tensor, dict]], theta: float | None) -> None:
    """Each method's Kendall lambda of (u_1, u_2) from its draws (N, q >= 2), and the Clayton lambda of ``theta``."""
    t = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    for name, (draws, _) in panels.items():
        if draws.shape[1] >= 2:
            # 2,000 draws keep the O(n²) estimate quick; the metric itself uses all draws.
            subset = draws[:2000]
            axis.plot(
                t.numpy(),
                empirical_lambda(subset[:, 0], subset[:, 1], t).numpy(),
                color=COLOURS.get(name, "tab:gray"),
                lw=1.3,
                label=name,
            )
    if theta is not None:
        axis.plot(
            t.numpy(), clayton_lambda(t, theta).numpy(), color="black", lw=1.6, ls="--", label=f"Clayton θ={theta:g}"
        )
    axis.set_title("Kendall λ(t) of (u_1, u_2)")
    axis.set_xlabel("t")
    axis.legend(fontsize=8, frameon=False)
