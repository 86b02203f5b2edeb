"""Mixed models: rows that share random effects through grouping factors, each factor with its own learned law.

A mixed model's linear predictor for row i is

    eta_i = offset_i + X_i · beta + Σ_f Z_{f,i} · u_{f, g_f(i)},     u_{f,g} = h_f(z_{f,g}),  z_{f,g} ~ N(0, I_q_f)

with one latent z_{f,g} (q_f-dimensional: one coordinate per random term of the factor, as in ``(1 + x | g)``) per
level g of each grouping factor f, and one decoder h_f per factor: the factor's random-effect law is the push-forward
of N(0, I) through h_f. ``MixedLinearDecoder`` (u = L z, L lower triangular) makes that law N(0, L Lᵀ), lme4's
model; ``MixedMLPDecoder`` (u = L z + an MLP of z) learns any smooth law (ALMOND).

Crossed and nested factors tie groups together (a row touches one level of each factor), so the whole data set is
one unit (``model.units``): its latent is every level of every factor laid end to end, z (B=1, C, d) with
d = Σ_f G_f q_f (``MixedLayout``), and the Langevin chains move all of them jointly; MALA accepts the latents of
each independent component (``components``: a factor's level, a location with its broods) on its own
(``MixedModel.log_joint_blocks``). Rows carry everything the
linear predictor needs (``MixedLayout`` lays the row out): the family's own row ([y] or [y, trials]), the offset,
the fixed-effect covariates X, the random-effect covariates Z of each factor and each factor's level index.

The family is one of the almond likelihoods (``poisson``, ``binomial``, ``bernoulli``, ``negative_binomial``, with
u = eta as their natural parameter) or ``gaussian``, whose residual sd a mixed model learns (``log_sigma``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .likelihoods import Gaussian, Likelihood
from .model import LatentVariableModel
from .networks import Decoder, Encoder, make_mlp
from .units import count, sum_over_rows

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Block:
    """One grouping factor's random effects: ``num_groups`` levels, ``terms`` random terms per level."""

    factor: str
    terms: tuple[str, ...]
    num_groups: int

    @property
    def size(self) -> int:
        """q, the latent dimension of one level (one coordinate per random term)."""
        return len(self.terms)


@dataclass(frozen=True)
class MixedLayout:
    """Where everything sits: in a data row (the columns) and in the latent vector (the blocks, end to end).

    Row layout: [family row (``family_width`` columns: y, then the family's ``row_columns``), offset, X (p),
    Z of block 0 (q_0), ..., Z of block K-1, level index of block 0, ..., of block K-1].
    """

    blocks: tuple[Block, ...]
    num_fixed: int
    family_width: int

    @classmethod
    def of(cls, blocks: Sequence, num_fixed: int, family_width: int) -> MixedLayout:
        """From plain values (as a config holds them): blocks as (factor, terms, num_groups) triples or ``Block``."""
        made = tuple(b if isinstance(b, Block) else Block(str(b[0]), tuple(b[1]), int(b[2])) for b in blocks)
        return cls(made, int(num_fixed), int(family_width))

    def plain(self) -> list:
        """The blocks as plain lists (for a config or a checkpoint)."""
        return [[b.factor, list(b.terms), b.num_groups] for b in self.blocks]

    @property
    def latent_dim(self) -> int:
        return sum(b.num_groups * b.size for b in self.blocks)

    def latent_starts(self) -> list[int]:
        """Where each block's latents start in the latent vector."""
        starts, at = [], 0
        for block in self.blocks:
            starts.append(at)
            at += block.num_groups * block.size
        return starts

    @property
    def offset_column(self) -> int:
        return self.family_width

    @property
    def fixed_columns(self) -> slice:
        return slice(self.family_width + 1, self.family_width + 1 + self.num_fixed)

    def z_columns(self, index: int) -> slice:
        start = self.family_width + 1 + self.num_fixed + sum(b.size for b in self.blocks[:index])
        return slice(start, start + self.blocks[index].size)

    def group_column(self, index: int) -> int:
        return self.family_width + 1 + self.num_fixed + sum(b.size for b in self.blocks) + index

    @property
    def row_width(self) -> int:
        return self.family_width + 1 + self.num_fixed + sum(b.size for b in self.blocks) + len(self.blocks)

    def split(self, latent: Tensor) -> list[Tensor]:
        """The blocks of a latent (..., d) as (..., G_f, q_f) views, in block order."""
        parts = []
        for block, start in zip(self.blocks, self.latent_starts()):
            size = block.num_groups * block.size
            parts.append(latent[..., start : start + size].reshape(*latent.shape[:-1], block.num_groups, block.size))
        return parts

    def join(self, parts: Sequence[Tensor]) -> Tensor:
        """The inverse of ``split``: (..., G_f, q_f) per block -> (..., d)."""
        return torch.cat([part.reshape(*part.shape[:-2], -1) for part in parts], dim=-1)


def _lower_triangular(size: int, scale: float) -> nn.Parameter:
    return nn.Parameter(torch.eye(size) * scale)


class MixedLinearDecoder(Decoder):
    """u_{f,g} = L_f z_{f,g} with L_f lower triangular: each factor's random effects N(0, L_f L_fᵀ), lme4's model
    (no mean: the fixed effects carry it).

    Args:
        blocks: the layout's blocks, as ``MixedLayout.of`` takes them.
        init_scale: the diagonal L starts at (the random effects' initial sd).
    """

    def __init__(self, blocks: Sequence, init_scale: float = 0.5, **_ignored):
        super().__init__()
        self.layout = MixedLayout.of(blocks, 0, 0)
        self.latent_dim = self.layout.latent_dim
        self.factors = nn.ParameterList([_lower_triangular(b.size, init_scale) for b in self.layout.blocks])

    def scale_matrix(self, index: int) -> Tensor:
        """L_f, (q, q) lower triangular."""
        return torch.tril(self.factors[index])

    def block_forward(self, index: int, z: Tensor) -> Tensor:
        """h_f of one block: z (..., q) -> u (..., q)."""
        return z @ self.scale_matrix(index).T

    @torch.no_grad()
    def spread_block(self, index: int, scale: Tensor, mean: Tensor) -> None:
        """Makes block ``index``'s output mean + scale · (h_f(z) − mean), exactly: each term's effects spread by its
        ``scale`` (q,) around ``mean`` (q,). L_f's rows are scaled (it stays lower triangular); the linear law has
        no offset to carry the (1 − scale) · mean, so its ``mean`` must be 0 (it is: the law is centred)."""
        factor = self.factors[index]
        factor.copy_(factor.double() * scale.double().to(factor.device).unsqueeze(1))

    def forward(self, z: Tensor) -> Tensor:
        parts = self.layout.split(z)
        return self.layout.join([self.block_forward(i, part) for i, part in enumerate(parts)])


class MixedMLPDecoder(MixedLinearDecoder):
    """u_{f,g} = L_f z + m_f(z), m_f an MLP whose last layer starts at zero: each factor's law starts Gaussian
    (N(0, L Lᵀ)) and the network bends it to whatever shape the data ask for. Its mean is not pinned to 0: the
    summary centres it and moves it into the matching fixed effect (``tasks/mixed.py``).

    Args:
        blocks: the layout's blocks.
        hidden_sizes: the widths of each factor's MLP.
        activation: a name from ``networks.ACTIVATIONS``.
        init: a name from ``networks.INITIALISATIONS`` (the hidden layers').
        init_scale: the diagonal L starts at.
    """

    def __init__(
        self,
        blocks: Sequence,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "tanh",
        init: str = "pytorch",
        init_scale: float = 0.5,
        **_ignored,
    ):
        super().__init__(blocks, init_scale)
        self.nets = nn.ModuleList(
            [make_mlp(b.size, hidden_sizes, b.size, activation, init) for b in self.layout.blocks]
        )
        for net in self.nets:
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)

    def block_forward(self, index: int, z: Tensor) -> Tensor:
        return super().block_forward(index, z) + self.nets[index](z)

    @torch.no_grad()
    def spread_block(self, index: int, scale: Tensor, mean: Tensor) -> None:
        """mean + scale · (L z + m(z) − mean) = (scale L) z + scale · m(z) + (1 − scale) · mean: L_f's rows and the
        MLP's last layer scaled, the last layer's bias shifted (float64, then stored)."""
        super().spread_block(index, scale, torch.zeros_like(mean))
        layer = self.nets[index][-1]
        scale, mean = scale.double().to(layer.weight.device), mean.double().to(layer.weight.device)
        layer.weight.copy_(layer.weight.double() * scale.unsqueeze(1))
        layer.bias.copy_(layer.bias.double() * scale + (1.0 - scale) * mean)


class MixedTableEncoder(Encoder):
    """q(z) = N(mean, diag exp(log_var)) with one free mean and variance per latent coordinate (per level of each
    factor and random term): a mean-field variational family, not amortised (a level's rows are not a fixed-size
    input). ``encode`` of ``MixedModel`` reads it; ``forward`` is not used.

    Args:
        latent_dim: d, every level of every factor.
        init_log_var: where the variances start (log).
    """

    def __init__(self, latent_dim: int, init_log_var: float = -2.0, **_ignored):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.mean = nn.Parameter(torch.zeros(self.latent_dim))
        self.log_var = nn.Parameter(torch.full((self.latent_dim,), float(init_log_var)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean.expand(x.shape[0], -1), self.log_var.expand(x.shape[0], -1)


class MixedLikelihood(Likelihood):
    """log f(y | eta) of a mixed model's rows, eta the linear predictor (module docstring); holds beta (the fixed
    effects) and the family's parameters (a Gaussian family's residual sd as ``log_sigma``).

    Not a config option (no ``name``): ``data=mixed`` builds it around the family ``likelihood=`` chose.

    Args:
        family: the likelihood of one row given its natural parameter u = eta (``Likelihood.log_prob`` on (R, 1)).
        layout: the ``MixedLayout``.
        fixed_start: beta's starting values (p,), e.g. the fixed-effects-only GLM fit; zeros if None.
        sigma_start: a Gaussian family's starting residual sd.
    """

    def __init__(self, family: Likelihood, layout: MixedLayout, fixed_start=None, sigma_start: float = 1.0):
        super().__init__()
        self.family = family
        self.layout = layout
        start = torch.zeros(layout.num_fixed) if fixed_start is None else torch.as_tensor(fixed_start).float()
        self.beta = nn.Parameter(start.clone())
        self.learns_sigma = isinstance(family, Gaussian)
        if self.learns_sigma:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma_start)))

    def param_dim(self, data_dim: int) -> int:
        return self.layout.latent_dim

    def fixed_part(self, x: Tensor) -> Tensor:
        """offset + X beta per row: (R,)."""
        layout = self.layout
        return x[:, layout.offset_column] + x[:, layout.fixed_columns] @ self.beta

    def random_part(self, x: Tensor, u: Tensor, units: Tensor) -> Tensor:
        """Σ_f Z_{f,i} · u_{f, g_f(i)} per row and chain: x (R, D), u (B, C, d) per unit, units (R,). Returns (R, C)."""
        layout = self.layout
        total = None
        for index, part in enumerate(layout.split(u)):  # part (B, C, G, q)
            groups = x[:, layout.group_column(index)].long()
            effects = part[units, :, groups, :]  # (R, C, q): each row's level of this factor, in its unit
            term = (effects * x[:, layout.z_columns(index)].unsqueeze(1)).sum(-1)
            total = term if total is None else total + term
        return total

    def log_prob_eta(self, x: Tensor, eta: Tensor) -> Tensor:
        """log f(y_i | eta_i) per row and chain: x (R, D) rows, eta (R, C). Returns (R, C)."""
        family_rows = x[:, : self.layout.family_width]
        if self.learns_sigma:
            sigma = self.log_sigma.exp()
            residual = (family_rows[:, :1] - eta) / sigma
            return -0.5 * residual.square() - self.log_sigma - 0.5 * LOG_2PI
        return self.family.log_prob(family_rows, eta.unsqueeze(-1))

    def log_prob_rows(self, x: Tensor, u: Tensor, units: Tensor) -> Tensor:
        """log f(y_i | eta_i(u)) per row and chain: (R, C)."""
        eta = self.fixed_part(x).unsqueeze(1) + self.random_part(x, u, units)
        return self.log_prob_eta(x, eta)

    def encoder_input(self, x: Tensor) -> Tensor:
        return x


class MixedModel(LatentVariableModel):
    """A mixed model as a latent-variable model: a table encoder, a per-factor decoder and ``MixedLikelihood``.

    The whole data set is one unit (module docstring): z is (B, C, d) with B the units of the batch (1 in
    training), and ``units`` maps every row to its unit.
    """

    likelihood: MixedLikelihood

    @property
    def layout(self) -> MixedLayout:
        return self.likelihood.layout

    def log_lik(self, x: Tensor, z: Tensor, units: Tensor | None = None) -> Tensor:
        """Σ over each unit's rows of log f(y_i | eta_i): (B, C)."""
        if units is None:
            units = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        per_row = self.likelihood.log_prob_rows(x, self.decoder(z), units)
        return sum_over_rows(per_row, units, z.shape[0])

    def latent_blocks(self, x: Tensor) -> Tensor | None:
        """(d,) each latent coordinate's independent component given the rows ``x`` (``mixed_inference.components``:
        levels linked through no shared row are independent a posteriori), or None where all are one component
        (crossed factors). Kept for the last ``x`` seen: training asks for the same table at every update."""
        key = (x.data_ptr(), tuple(x.shape), str(x.device))
        cached = getattr(self, "_latent_blocks", None)
        if cached is None or cached[0] != key:
            row_component, parts = components(self, x)
            block = torch.empty(self.layout.latent_dim, dtype=torch.long)
            for index, coordinates in enumerate(parts):
                block[coordinates] = index
            found = None if len(parts) < 2 else (block.to(x.device), row_component.to(x.device), len(parts))
            self._latent_blocks = cached = (key, found)
        return None if cached[1] is None else cached[1][0]

    def log_joint_blocks(self, x: Tensor, z: Tensor, units: Tensor | None = None, decoder=None) -> Tensor:
        """log f + log N(z; 0, I) per unit, chain and independent component (``latent_blocks``): (B, C, K), summing
        to ``log_joint``; ``decoder`` stands in for the model's own (a tabulated copy of its laws for one update,
        ``langevin/tabulated.py``'s ``TabulatedLaws``)."""
        if self.latent_blocks(x) is None:
            raise ValueError("log_joint_blocks needs rows whose latents split into independent components")
        block, row_component, count = self._latent_blocks[1]
        if units is None:
            units = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        batch, chains = z.shape[0], z.shape[1]
        per_row = self.likelihood.log_prob_rows(
            x, (decoder if decoder is not None else self.decoder)(z), units
        )  # (R, C)
        rows = per_row.new_zeros(batch * count, chains).index_add(0, units * count + row_component, per_row)
        prior = -0.5 * (z.square() + LOG_2PI)  # (B, C, d)
        priors = prior.new_zeros(batch, chains, count).index_add(-1, block, prior)
        return rows.reshape(batch, count, chains).transpose(1, 2) + priors

    def for_groups(self, layout: MixedLayout) -> MixedModel:
        """The fitted model laid out for other groups (held-out or new ones, ``layout``: the same factors and
        terms, other levels): each factor's fitted law h_f, the fixed effects and the family's parameters, copied,
        and a fresh table encoder of the new latent dimension (q(z) = N(0, I) until fitted). The new groups' random
        effects are new draws from the fitted laws: nothing of the training groups' posteriors is kept.

        Raises:
            ValueError: ``layout`` has other factors, terms or fixed effects than this model's.
        """
        mine = self.layout
        same = [(b.factor, b.terms) for b in mine.blocks] == [(b.factor, b.terms) for b in layout.blocks]
        if not same or (mine.num_fixed, mine.family_width) != (layout.num_fixed, layout.family_width):
            raise ValueError("for_groups needs a layout of the same factors, terms and fixed effects")
        parameter = next(self.decoder.parameters())
        decoder = copy.deepcopy(self.decoder)
        decoder.layout = MixedLayout.of(layout.blocks, 0, 0)
        decoder.latent_dim = layout.latent_dim
        likelihood = copy.deepcopy(self.likelihood)
        likelihood.layout = layout
        encoder = MixedTableEncoder(layout.latent_dim, init_log_var=0.0).to(parameter.device, parameter.dtype)
        return MixedModel(encoder, decoder, likelihood).train(self.training)

    def chain_whitening(self) -> tuple[Tensor, Tensor]:
        """The chains move in the coordinates of the warm start's q: z = mean + sd · w per level and term (fixed
        once the VAE phase is over), so one Langevin step suits a level pinned down by hundreds of rows and a level
        of two rows alike."""
        encoder = self.encoder
        return encoder.mean.detach(), (0.5 * encoder.log_var.detach()).exp()

    def encode(self, x: Tensor, units: Tensor | None = None, num_units: int | None = None) -> tuple[Tensor, Tensor]:
        """(mean, log_var) of q(z), each (B, d): the table's, for each of the B units (1 in training)."""
        if num_units is None:
            num_units = 1 if units is None else count(units, x.shape[0])
        encoder = self.encoder
        return encoder.mean.expand(num_units, -1), encoder.log_var.expand(num_units, -1)


def components(model: MixedModel, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The independent parts of the posterior: rows linked through a shared level of any factor (a brood and the
    location it lies in) form one component, and components' latents are independent given y.

    Returns:
        (component (R,) of each row, 0..K-1; the latent coordinates of each component, a list of K index tensors).
    """
    layout = model.layout
    starts = layout.latent_starts()
    # every (factor, level) is a node; a row joins the nodes it touches
    node_of = [
        x[:, layout.group_column(i)].long().cpu().numpy() + sum(b.num_groups for b in layout.blocks[:i])
        for i in range(len(layout.blocks))
    ]
    parent = np.arange(sum(b.num_groups for b in layout.blocks))

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for row in range(x.shape[0]):
        first = root(node_of[0][row])
        for nodes in node_of[1:]:
            other = root(nodes[row])
            if other != first:
                parent[other] = first
    roots = np.array([root(node) for node in range(parent.shape[0])])
    labels, component_of_node = np.unique(roots, return_inverse=True)
    row_component = torch.from_numpy(component_of_node[node_of[0]]).long()
    coordinates: list[list[int]] = [[] for _ in labels]
    node = 0
    for block, start in zip(layout.blocks, starts):
        for level in range(block.num_groups):
            first = start + level * block.size
            coordinates[component_of_node[node]].extend(range(first, first + block.size))
            node += 1
    return row_component, [torch.tensor(c, dtype=torch.long) for c in coordinates]
