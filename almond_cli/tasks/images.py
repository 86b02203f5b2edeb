"""The image task (``data=mnist``): held-out likelihood and pictures, as Qiu & Wang (2019, Section 5.3).

Scores: ``test_nll`` and ``test_nll_se`` (``model/marginal.py``) for the VAE warm start and for ALMOND, on the same
held-out images with the same K and draws. Figures in ``figures/``:

- ``samples.png``: a 10×10 grid of decoder means sigmoid(h(z)) for z ~ N(0, I) (one seeded set of z),
  VAE warm start beside ALMOND;
- ``reconstructions.png``: held-out images, and each model's decoder mean at its importance-sampled
  posterior mean E[z | x];
- ``latent_map.png`` (2-d latents only): those posterior means of the held-out images, coloured by label,
  like the paper's figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from ..data.dataset import ImageDataset  # noqa: E402
from ..model.marginal import MarginalEstimate, estimate_with, nll_summary  # noqa: E402
from ..model.model import evaluation_mode, prior_draws  # noqa: E402
from .base import Task  # noqa: E402
from .figures import save_figure  # noqa: E402

GRID = 10  # samples.png is GRID × GRID
NUM_RECONSTRUCTIONS = 12


def held_out(dataset: ImageDataset, cfg) -> tuple[Tensor, Tensor]:
    """The held-out images scored by ``test_nll``, (n, D), and their labels (n,): the first ``nll_images``."""
    x, labels = dataset.test_x, dataset.test_labels
    limit = cfg.evaluation.nll_images
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    return x, labels


@torch.no_grad()
def decoder_means(model, z: Tensor) -> Tensor:
    """The pixel means sigmoid(h(z)) in eval mode. Args: z (n, d) on the model's device. Returns (n, D) on the CPU."""
    with evaluation_mode(model):
        return model.likelihood.mean(model.decoder(z)).float().cpu()


def sample_means(model, cfg, count: int, device) -> Tensor:
    """The pixel means of ``count`` draws u = h(z) from ``evaluation.seed`` + 1: the same z for every model."""
    generator = torch.Generator().manual_seed(int(cfg.evaluation.seed) + 1)
    return model.likelihood.mean(prior_draws(model.decoder, int(cfg.latent_dim), count, generator, device)).float()


def image_grid(images: Tensor, shape: tuple[int, int, int], ncols: int) -> np.ndarray:
    """Tiles flat images (n, D) into one (rows·H + gaps, ncols·W + gaps) array for ``imshow``."""
    channels, height, width = shape
    images = images.reshape(-1, channels, height, width)[:, 0].numpy()
    nrows = int(np.ceil(images.shape[0] / ncols))
    gap = 1
    canvas = np.ones((nrows * (height + gap) - gap, ncols * (width + gap) - gap), dtype=np.float32)
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        canvas[
            row * (height + gap) : row * (height + gap) + height, col * (width + gap) : col * (width + gap) + width
        ] = image
    return canvas


class ImageTask(Task):
    """``test_nll`` with its standard error, and the samples, reconstructions and latent-map figures."""

    def __init__(self):
        self._estimate: MarginalEstimate | None = None

    def _estimate_for(self, model, dataset, cfg, device) -> MarginalEstimate:
        x, _ = held_out(dataset, cfg)
        return estimate_with(cfg.evaluation, model, x.to(device))

    def score(self, model, dataset, cfg, device):
        self._estimate = self._estimate_for(model, dataset, cfg, device)
        return nll_summary(self._estimate)

    def snapshot(self, model, dataset, cfg, device):
        """The VAE's pictures, kept in the checkpoint for the final side-by-side figures."""
        estimate = self._estimate if self._estimate is not None else self._estimate_for(model, dataset, cfg, device)
        return self._pictures(model, estimate, cfg, device)

    def _pictures(self, model, estimate: MarginalEstimate, cfg, device) -> dict:
        return {
            "samples": sample_means(model, cfg, GRID * GRID, device),
            "reconstructions": decoder_means(model, estimate.posterior_mean[:NUM_RECONSTRUCTIONS].to(device)),
            "posterior_mean": estimate.posterior_mean.clone(),
        }

    def figures(self, run_dir, model, dataset, cfg, device, summary, vae_snapshot):
        estimate = self._estimate if self._estimate is not None else self._estimate_for(model, dataset, cfg, device)
        panels = {}
        if vae_snapshot is not None:
            panels["VAE warm start"] = (vae_snapshot, summary.get("vae", {}))
        panels["ALMOND"] = (self._pictures(model, estimate, cfg, device), summary.get("almond", {}))
        shape = tuple(dataset.image_shape)
        figures_dir = Path(run_dir) / "figures"
        samples_figure(panels, shape, figures_dir / "samples.png")
        x, labels = held_out(dataset, cfg)
        reconstructions_figure(x[:NUM_RECONSTRUCTIONS], panels, shape, figures_dir / "reconstructions.png")
        if cfg.latent_dim == 2:
            latent_map_figure(panels, labels, figures_dir / "latent_map.png")


def _title(name: str, metrics: dict) -> str:
    if "test_nll" in metrics:
        return f"{name}\ntest NLL {metrics['test_nll']:.2f} ± {metrics['test_nll_se']:.2f} nats"
    return name


def samples_figure(panels: dict, shape, path: Path) -> None:
    """One 10×10 grid of decoder means per model, from the same prior draws."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 5.0), squeeze=False)
    for axis, (name, (pictures, metrics)) in zip(axes[0], panels.items()):
        axis.imshow(image_grid(pictures["samples"], shape, GRID), cmap="gray", vmin=0, vmax=1)
        axis.set_title(_title(name, metrics), fontsize=10)
        axis.axis("off")
    figure.suptitle("samples: sigmoid(h(z)), z ~ N(0, I), same z in every panel")
    save_figure(figure, path)


def reconstructions_figure(x: Tensor, panels: dict, shape, path: Path) -> None:
    """Held-out images in the first row, each model's reconstruction from E[z | x] below."""
    rows = [("held-out images", x.float())] + [
        (name, pictures["reconstructions"]) for name, (pictures, _) in panels.items()
    ]
    figure, axes = plt.subplots(len(rows), 1, figsize=(0.9 * x.shape[0], 1.25 * len(rows)), squeeze=False)
    for axis, (name, images) in zip(axes[:, 0], rows):
        axis.imshow(image_grid(images, shape, x.shape[0]), cmap="gray", vmin=0, vmax=1)
        axis.set_title(name, fontsize=9, loc="left")
        axis.axis("off")
    figure.suptitle("reconstructions: sigmoid(h(E[z | x])), E[z | x] by importance sampling")
    save_figure(figure, path)


def latent_map_figure(panels: dict, labels: Tensor, path: Path) -> None:
    """Posterior means E[z | x] of the held-out images in the 2-d latent space, coloured by digit label."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    scatter = None
    for axis, (name, (pictures, _)) in zip(axes[0], panels.items()):
        means = pictures["posterior_mean"].numpy()
        scatter = axis.scatter(
            means[:, 0],
            means[:, 1],
            c=labels[: means.shape[0]].numpy(),
            cmap="tab10",
            vmin=-0.5,
            vmax=9.5,
            s=6,
            alpha=0.8,
        )
        axis.set_title(name)
        axis.set_xlabel("z1")
        axis.set_ylabel("z2")
    figure.colorbar(scatter, ax=list(axes[0]), ticks=range(10), label="label")
    figure.suptitle("latent map: posterior means of held-out images")
    save_figure(figure, path)
