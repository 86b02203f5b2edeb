"""Data sets: observations x (n, D) and, for simulations, the truth that scores a fit.

The many-normal-means simulation follows Qiu & Wang (2019, Section 5.1): mu_i ~ prior, x_i = mu_i + N(0, 1).
Data sets with more to say than x and the truth are typed subclasses (``GLMMDataset``, ``ImageDataset``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import UsageError
from ..model.model import LatentVariableModel
from ..model.units import UnitRows
from .priors import Prior, make_prior


@dataclass
class Dataset:
    """Observations and what is known about how they were made.

    Attributes:
        x: (n, D) float32 observations, one row per data point.
        name: the data option that made them (``data.name``).
        truth: (n, P) true latent values u_i, where known.
        prior: the true distribution of u, where known (a simulation).
        transform: optional ``transform(x (B, D), generator) -> (B, D)`` applied to every training batch with
            the run's seeded noise generator (dynamic binarisation of images); None for most data.
        source: the file the rows were read from, None for a simulation.
        row_labels: how each row is named in output files (a CSV's line numbers); None numbers them 0..n-1.
        column_names: the names of the observation columns, where the file has a header.
        ids: each row's label from ``data.id_column``, and ``id_name`` that column's name.
        heldout: the rows ``data.holdout_fraction`` kept out of training (a ``Dataset`` of the same kind, scored by
            ``heldout_nll``); None when every row is trained on. This data set then holds the training rows only.
        read_fingerprint: the ``fingerprint`` of every row as read, kept by ``hold_out``; None before a split.
        unit_index: (n,) long, the unit (0..U-1) each row belongs to: rows of one unit share one latent and one set
            of persistent chains, and are batched, held out and sharded together (``model.units``). None, the
            default, makes every row its own unit (U = n), with the one-row code path in every layer.
        unit_labels: how each unit is named in output files (U labels); None numbers them 0..U-1 (the rows'
            labels when every row is its own unit).
    """

    x: Tensor
    name: str
    truth: Tensor | None = None
    prior: Prior | None = None
    transform: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None
    source: str | None = None
    row_labels: list[int] | None = None
    column_names: list[str] | None = None
    ids: list[str] | None = None
    id_name: str | None = None
    heldout: Dataset | None = None
    read_fingerprint: dict | None = field(default=None, repr=False)
    unit_index: Tensor | None = field(default=None, repr=False)
    unit_labels: list | None = None

    def __post_init__(self):
        if self.unit_index is not None:
            if self.unit_index.shape != (self.x.shape[0],) or self.unit_index.dtype != torch.long:
                raise ValueError(
                    f"unit_index must be a long tensor of shape ({self.x.shape[0]},), got "
                    f"{self.unit_index.dtype} {tuple(self.unit_index.shape)}"
                )
            if self.unit_index.numel() and (
                int(self.unit_index.min()) < 0 or bool((torch.bincount(self.unit_index) == 0).any())
            ):
                raise ValueError("unit_index must number the units 0..U-1, each with at least one row")

    @property
    def num_points(self) -> int:
        return self.x.shape[0]

    @property
    def num_units(self) -> int:
        """U, the number of units (latents): the number of rows when every row is its own unit."""
        if self.unit_index is None:
            return self.num_points
        return int(self.unit_index.max()) + 1 if self.unit_index.numel() else 0

    def units(self) -> list:
        """The label of every unit in output files: the rows' labels when every row is its own unit."""
        if self.unit_labels is not None:
            return self.unit_labels
        return self.rows() if self.unit_index is None else list(range(self.num_units))

    def unit_rows(self) -> UnitRows | None:
        """The rows of each unit (``model.units.UnitRows``); None when every row is its own unit."""
        return None if self.unit_index is None else UnitRows(self.unit_index, self.num_units)

    @property
    def data_dim(self) -> int:
        return self.x.shape[1]

    def rows(self) -> list[int]:
        """The label of every row in output files."""
        return self.row_labels if self.row_labels is not None else list(range(self.num_points))

    def likelihood_args(self) -> dict:
        """Likelihood sizes the data define (the GLMM's number of fixed effects); none by default."""
        return {}

    def latent_dim_for(self, requested: int) -> int:
        """The latent dimension d of a model of these data: ``latent_dim`` as the config asks, unless the data
        define it (a mixed model: one coordinate per level and random term)."""
        return requested

    def network_args(self) -> dict:
        """Arguments the data give the encoder and the decoder besides their sizes (a mixed model's blocks)."""
        return {}

    def model(self, encoder, decoder, likelihood) -> LatentVariableModel:
        """The model of these data from its three parts (a mixed model wraps the family in its own likelihood)."""
        return LatentVariableModel(encoder, decoder, likelihood)

    def arrays(self) -> dict[str, Tensor]:
        """The arrays a fit depends on, by name: what ``fingerprint`` hashes."""
        return {
            name: array
            for name, array in (("x", self.x), ("truth", self.truth), ("unit_index", self.unit_index))
            if array is not None
        }

    def select(self, rows: Tensor) -> Dataset:
        """The data set of ``rows`` (indices into these rows), in that order: every per-row field follows, and the
        rows keep their labels in output files. The units the rows belong to are renumbered 0..U'-1 in the order of
        their old numbers and keep their labels."""
        picked = rows.tolist()
        labels = self.rows()
        units = {}
        if self.unit_index is not None:
            kept, unit_index = torch.unique(self.unit_index[rows], sorted=True, return_inverse=True)
            unit_labels = self.units()
            units = {"unit_index": unit_index, "unit_labels": [unit_labels[i] for i in kept.tolist()]}
        return replace(
            self,
            x=self.x[rows],
            truth=None if self.truth is None else self.truth[rows],
            row_labels=[labels[i] for i in picked],
            ids=None if self.ids is None else [self.ids[i] for i in picked],
            heldout=None,
            read_fingerprint=None,
            **units,
        )

    def select_units(self, units: Tensor) -> Dataset:
        """The data set of ``units`` (indices into these units) with all their rows, in the order of the units'
        numbers and the rows as read; the same as ``select`` when every row is its own unit."""
        if self.unit_index is None:
            return self.select(units)
        rows, _ = self.unit_rows().of(units)
        return self.select(rows.sort().values)

    def holdout_split(self, fraction: float, generator: torch.Generator) -> tuple[Dataset, Dataset]:
        """(training part, held-out part) for ``hold_out``: ``round(fraction · U)`` (at least one) of the U units,
        the first ones of a permutation drawn from ``generator``, with all their rows.

        Raises:
            UsageError: when no unit would be left to train on.
        """
        n = self.num_units
        what = "rows" if self.unit_index is None else "units"
        count = max(1, round(fraction * n))
        if count >= n:
            raise UsageError(
                f"data.holdout_fraction: {fraction} of {n} {what} holds out {count}, which leaves no "
                f"{what[:-1]} to train on; lower data.holdout_fraction (0 trains on every row) or use more "
                "data"
            )
        order = torch.randperm(n, generator=generator)
        train_units, heldout_units = order[count:].sort().values, order[:count].sort().values
        return self.select_units(train_units), self.select_units(heldout_units)

    def fingerprint(self) -> dict:
        """What identifies these data: a SHA-256 of every array as read (its shape, dtype and bytes), each array's
        shape, and the file it came from. A checkpoint keeps it, so a run is never continued, scored or sampled
        on data other than those it was fitted to (``check_same_data``). After ``hold_out`` it is still that of
        every row as read: the split itself follows from the saved config (``data.holdout_fraction``, ``seed``)."""
        if self.read_fingerprint is not None:
            return self.read_fingerprint
        digest = hashlib.sha256()
        shapes = {}
        for name, array in self.arrays().items():
            array = array.detach().cpu().contiguous()
            shapes[name] = list(array.shape)
            digest.update(f"{name}:{tuple(array.shape)}:{array.dtype};".encode())
            digest.update(array.numpy().tobytes())
        return {"sha256": digest.hexdigest(), "shapes": shapes, "source": self.source or f"data={self.name}"}


@dataclass
class GLMMDataset(Dataset):
    """Poisson GLMM rows [y, x_1..x_p, zeta_1..zeta_q] (see ``model.likelihoods.PoissonGLMM``).

    Attributes:
        num_fixed: p, the number of fixed-effect covariates.
        fixed_names: their names (header names, or x1..xp for a simulation).
        true_beta: (p,) the simulation's fixed effects; None for a user's file.
        copula_theta: the simulation's Clayton parameter; None for a user's file.
    """

    num_fixed: int = 0
    fixed_names: list[str] = field(default_factory=list)
    true_beta: Tensor | None = None
    copula_theta: float | None = None

    def likelihood_args(self) -> dict:
        return {"num_fixed": self.num_fixed}


@dataclass
class ImageDataset(Dataset):
    """Images as flat rows (n, channels·rows·cols), with the held-out images that ``test_nll`` scores.

    Attributes:
        image_shape: (channels, rows, cols) of one image.
        pixels: the pixel mode (``data.pixels``).
        train_labels: (n,) labels of the training rows (figures only; training never sees them).
        test_x: (n_test, D) held-out images, and ``test_labels`` (n_test,) their labels.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    pixels: str = "continuous"
    train_labels: Tensor | None = None
    test_x: Tensor | None = None
    test_labels: Tensor | None = None

    def arrays(self) -> dict[str, Tensor]:
        return {**super().arrays(), **({"test_x": self.test_x} if self.test_x is not None else {})}

    def select(self, rows: Tensor) -> ImageDataset:
        selected = super().select(rows)
        return replace(selected, train_labels=None if self.train_labels is None else self.train_labels[rows])


def check_same_data(saved: dict | None, dataset: Dataset, command: str) -> None:
    """Refuses ``dataset`` when it differs from the data a checkpoint's run was fitted to (``saved``: the
    checkpoint's ``data`` fingerprint; None for a checkpoint written before almond kept one, which is not checked).

    Raises:
        UsageError: naming the file and what differs, and how to fit new data on purpose (a new run).
    """
    if saved is None:
        return
    now = dataset.fingerprint()
    if now["sha256"] == saved["sha256"]:
        return
    differences = [
        f"{name} has shape {tuple(now['shapes'].get(name, ()))}, the run's had {tuple(saved['shapes'].get(name, ()))}"
        for name in sorted(set(now["shapes"]) | set(saved["shapes"]))
        if now["shapes"].get(name) != saved["shapes"].get(name)
    ]
    if not differences:
        differences = [
            "the values differ (same shapes, SHA-256 "
            + now["sha256"][:12]
            + " against the run's "
            + saved["sha256"][:12]
            + ")"
        ]
    source = now["source"] if now["source"] == saved["source"] else f"{now['source']} (the run read {saved['source']})"
    raise UsageError(
        f"{command}: the data are not those this run was fitted to: {source}: {'; '.join(differences)}. "
        "A run is only continued, scored or sampled on its own data; to fit changed data, start a new "
        "run (almond train without resume=), which leaves this run folder as it is"
    )


def holdout_generator(seed: int) -> torch.Generator:
    """The generator of the hold-out split: a stream of its own, seeded by SHA-256 of ``almond:{seed}:holdout``, so
    the data set's own draws are unchanged and every command that rebuilds the data from the saved config gets the
    same split."""
    stream = int.from_bytes(hashlib.sha256(f"almond:{seed}:holdout".encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(stream)


def hold_out(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """Keeps ``round(fraction · n)`` random rows (at least one) out of training: ``data.holdout_fraction``. Where
    rows are grouped in units (``Dataset.unit_index``), whole units are kept out the same way: ``round(fraction ·
    U)`` of the U units with all their rows. A data set may split itself otherwise (``Dataset.holdout_split``: a
    mixed model holds out whole groups of one grouping factor).

    The rows are a permutation's first ones, from a generator of their own stream (``holdout_generator``; ``seed``:
    the data stream's seed the data set was built with, itself derived from the run's ``seed``). Both parts keep the
    order of the rows as read.

    Args:
        dataset: every row as read.
        fraction: in [0, 1); 0 returns ``dataset`` itself.
        seed: the seed ``dataset`` was built with.

    Returns:
        The training rows, with ``heldout`` the held-out rows and the fingerprint of every row as read.

    Raises:
        UsageError: when no row would be left to train on.
    """
    if fraction <= 0:
        return dataset
    trained, held = dataset.holdout_split(fraction, holdout_generator(seed))
    return replace(trained, heldout=held, read_fingerprint=dataset.fingerprint())


def rejoin_heldout(dataset: Dataset) -> tuple[Dataset, Tensor]:
    """The training units of ``dataset`` and its held-out ones (``hold_out``'s two parts) as one data set.

    Where every row is its own unit the rows come back in the order read (by their labels); grouped rows come back
    as the training units, then the held-out ones. Every unit keeps its labels.

    Returns:
        (the joined data set, without ``heldout``; (U,) long: each of its units' index among the training units
        followed by the held-out ones, so index >= ``dataset.num_units`` marks a held-out unit).
    """
    held = dataset.heldout
    source = torch.arange(dataset.num_units + (held.num_units if held is not None else 0))
    if held is None:
        return dataset, source

    def joined(a, b):
        return None if a is None or b is None else torch.cat([a, b])

    grouped = dataset.unit_index is not None
    together = replace(
        dataset,
        x=torch.cat([dataset.x, held.x]),
        truth=joined(dataset.truth, held.truth),
        row_labels=dataset.rows() + held.rows(),
        ids=None if dataset.ids is None or held.ids is None else dataset.ids + held.ids,
        heldout=None,
        read_fingerprint=None,
        unit_index=joined(dataset.unit_index, None if not grouped else held.unit_index + dataset.num_units),
        unit_labels=dataset.units() + held.units() if grouped else None,
    )
    if grouped:
        return together, source
    labels = together.rows()
    order = torch.tensor(sorted(range(len(labels)), key=lambda i: labels[i]), dtype=torch.long)
    return together.select(order), source[order]


def make_normal_means(n: int, prior_name: str, noise_sd: float, generator: torch.Generator) -> Dataset:
    """n draws mu_i from the named prior and x_i = mu_i + noise_sd · N(0, 1)."""
    prior = make_prior(prior_name)
    mu = prior.sample(n, generator)
    x = mu + noise_sd * torch.randn(n, generator=generator, dtype=torch.float64)
    return Dataset(x=x.float().unsqueeze(1), name="normal_means", truth=mu.float().unsqueeze(1), prior=prior)


def build_normal_means(data_cfg, generator: torch.Generator) -> Dataset:
    """The ``data=normal_means`` simulation ``data_cfg`` describes."""
    prior = getattr(data_cfg.prior, "value", data_cfg.prior)  # a typed config holds an Enum
    return make_normal_means(data_cfg.n, str(prior), data_cfg.noise_sd, generator)
