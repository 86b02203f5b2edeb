"""The run folder's figures: one panel per thing there is to draw, and no library warning on screen (every test
here runs the figure code with warnings turned into errors)."""

from __future__ import annotations

import warnings

import pytest
import torch

from almond_cli.data.priors import ExponentialPrior
from almond_cli.tasks import figures, file, glmm_figures


@pytest.fixture
def drawn(monkeypatch):
    """The figures the code under test finishes, kept open instead of written: {file name: figure}."""
    kept = {}

    def keep(figure, path):
        kept[path.name] = figure

    for module in (figures, file, glmm_figures):
        monkeypatch.setattr(module, "save_figure", keep)
    yield kept
    for figure in kept.values():
        figures.plt.close(figure)


def _draws(columns: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(3000, columns, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("columns", [1, 2])
@pytest.mark.parametrize("theta", [None, 2.0])
def test_random_effects_figure_has_a_kendall_panel_only_for_a_pair(tmp_path, drawn, columns, theta):
    """A 1-d random effect (a user's GLMM with one random slope or intercept) has no pair of coordinates: no Kendall
    panel, and none of matplotlib's "No artists with labels found" on screen; two coordinates keep it."""
    panels = {"vae": (_draws(columns, 1), {}), "almond": (_draws(columns, 2), {"ks": 0.1, "w1": 0.2})}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        glmm_figures.random_effects_figure(panels, None, theta, tmp_path / "random_effects.png")
    axes = drawn["random_effects.png"].axes
    assert len(axes) == len(panels) + (columns >= 2)
    for axis in axes:
        assert axis.get_legend() is not None and axis.get_legend().get_texts()  # every legend names something
    assert ("Kendall" in axes[-1].get_title()) == (columns >= 2)


def test_the_other_run_figures_warn_nothing(tmp_path, drawn):
    panels = {"almond": (_draws(1)[:, 0].abs(), {"ks": 0.1, "w1": 0.2}), "npmle": (_draws(1, 3)[:, 0].abs(), {})}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures.latent_density_figure(panels, ExponentialPrior(2.0), 1.0, tmp_path / "latent_density.png")
        file.latent_histogram_figure(panels, _draws(1, 4)[:, 0], tmp_path / "latent_distribution.png")
    assert set(drawn) == {"latent_density.png", "latent_distribution.png"}
