"""Observation models f(x | u): the log-density of data given the decoder's output u = h(z).

Every likelihood maps a batch of observations x of shape (B, D) and decoder outputs u of shape (B, C, P)
(C chains or draws per data point) to log f(x | u) of shape (B, C), summed over the data dimensions.
Likelihoods are modules because some carry parameters that are learned with the decoder (theta).

A likelihood owns everything about itself: its config option name (``name``, the file
configs/likelihood/<name>.yaml), the per-row columns its rows carry after the measurements (``row_columns``,
split off by ``observations`` and ``row_column``), the data it gives zero probability (``support_violation``,
``describe_violation``), its mean given u (``mean``, ``mean_name``), its Gaussian noise sd (``noise_sd``) and
what the encoder reads (``encoder_input``). Adding one is one subclass here (with a ``name``: it registers
itself in ``LIKELIHOODS``), one YAML file and its tests.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

LIKELIHOODS: dict[str, type[Likelihood]] = {}
"""Every likelihood class with a ``name``, by that name (filled by ``Likelihood.__init_subclass__``)."""


def target_of(cls: type) -> str:
    """The import path a config's ``_target_`` names ``cls`` by, e.g. "almond_cli.model.likelihoods.Poisson"."""
    return f"{cls.__module__}.{cls.__qualname__}"


def likelihood_class(target: str) -> type[Likelihood] | None:
    """The registered likelihood class whose import path (``target_of``) is ``target``; None for any other."""
    for cls in LIKELIHOODS.values():
        if target_of(cls) == target:
            return cls
    return None


def row_column_names() -> tuple[str, ...]:
    """Every per-row column name a registered likelihood declares (``Likelihood.row_columns``), in the order data
    rows carry them: a data file lays out the row columns its config names in this order."""
    return tuple(dict.fromkeys(name for cls in LIKELIHOODS.values() for name in cls.row_columns))


def _check_row_column_order(cls: type[Likelihood]) -> None:
    """Refuses a likelihood whose ``row_columns`` list names that others share in another order: a file builds its
    rows in one order (``row_column_names``) before it knows the likelihood."""
    known = [name for name in row_column_names() if name in cls.row_columns]
    shared = [name for name in cls.row_columns if name in known]
    if shared != known:
        raise TypeError(
            f"{target_of(cls)}.row_columns lists {shared} in another order than the registered "
            f"likelihoods ({known}); list them in that order"
        )


def _count_violation(values: np.ndarray) -> np.ndarray:
    """True where a cell is not a count 0, 1, 2, ...: negative or not an integer (NaN counts as the latter)."""
    return (values < 0) | (values != np.round(values))


def _describe_count(value: float) -> str:
    return "which is negative" if value < 0 else "which is not an integer"


class Likelihood(nn.Module):
    """Base class. Subclasses define ``param_dim`` and ``log_prob``, and a ``name`` to be a config option.

    ``param_dim(data_dim)`` is the size P of the decoder output the likelihood needs for data of
    dimension D, so the decoder can be built to match the data.

    Class attributes:
        name: the config option (likelihood=<name>, configs/likelihood/<name>.yaml). A subclass that sets it
            in its own body registers itself in ``LIKELIHOODS``; None (the base) registers nothing.
        row_columns: the names of the per-row columns a data row carries after its measurements, in this order
            (``("sd",)``: each row's known noise sd); () for none. ``data=file`` fills column ``name`` from
            ``data.<name>_column``. Every likelihood lists shared names in one order (``row_column_names``).
        mean_name: the word for E[x | u] where it differs from u ("rate", "prob"), e.g. for a posterior-mean
            column ``post_mean_<mean_name>``; None where there is no separate mean to report (the Gaussians,
            whose mean is u itself, and the GLMM, whose mean needs the covariates).
    """

    name: ClassVar[str | None] = None
    row_columns: ClassVar[tuple[str, ...]] = ()
    mean_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is None:
            return
        _check_row_column_order(cls)
        known = LIKELIHOODS.get(name)
        if known is not None and target_of(known) != target_of(cls):  # the same path again is a module reload
            raise TypeError(f"likelihood name {name!r} of {target_of(cls)} is already taken by {target_of(known)}")
        LIKELIHOODS[name] = cls

    def param_dim(self, data_dim: int) -> int:
        raise NotImplementedError

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        """Args: x (B, D) observations; u (B, C, P) decoder outputs. Returns: (B, C) log f(x | u)."""
        raise NotImplementedError

    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder q(z | x) reads of the observations (B, D) -> (B, D); by default x itself."""
        return x

    @classmethod
    def support_violation(cls, values: np.ndarray) -> tuple[np.ndarray, str] | None:
        """The cells this likelihood gives zero probability.

        Args:
            values: (n, k) float64 data columns laid out as the likelihood reads a row of x: the observation
                columns, then the ``row_columns`` (so for every likelihood but the GLMM and gaussian_hetero these
                are exactly the observation columns).
        Returns:
            None when every cell is fine; otherwise (a boolean (n, k) mask of the offending cells, a phrase
            saying what the likelihood needs, e.g. "likelihood=poisson needs counts 0, 1, 2, ... in every
            observation column"). ``describe_violation(value)`` says what is wrong with one flagged cell, so a
            caller writes "<cell> is {value:g}, {describe_violation(value)}; {phrase}".
        """
        return None

    @classmethod
    def describe_violation(cls, value: float) -> str:
        """What is wrong with one cell ``support_violation`` flagged, as the clause after "is {value:g}, "
        (e.g. "which is negative")."""
        return f"which likelihood={cls.name} gives zero probability"

    def mean(self, u: Tensor) -> Tensor:
        """E[x | u] for decoder outputs u (any shape), elementwise."""
        raise NotImplementedError(f"{type(self).__name__} does not define the mean of x given u")

    @classmethod
    def observations(cls, x):
        """The measurement columns of data rows x (n, D + k) (a tensor or an array): x without its k
        ``row_columns``, which is x itself for a likelihood without any."""
        return x[:, : x.shape[1] - len(cls.row_columns)] if cls.row_columns else x

    @classmethod
    def row_column(cls, x, name: str):
        """(n,) the per-row column ``name`` (one of ``row_columns``) of data rows x (n, D + k)."""
        if name not in cls.row_columns:
            raise KeyError(f"likelihood={cls.name} rows carry no {name!r} column (row_columns: {cls.row_columns})")
        return x[:, x.shape[1] - len(cls.row_columns) + cls.row_columns.index(name)]

    @classmethod
    def split_row(cls, x) -> tuple:
        """(measurements (n, D), {name: (n,) column} for each of ``row_columns``) of data rows x (n, D + k)."""
        return cls.observations(x), {name: cls.row_column(x, name) for name in cls.row_columns}

    def noise_sd(self, x: Tensor) -> float | None:
        """The Gaussian noise sd of the data rows x (a summary over rows where it varies); None for a
        likelihood that is not Gaussian."""
        return None


class Gaussian(Likelihood):
    """x | u ~ N(u, sigma² I) with known noise standard deviation ``sigma`` (many normal means).

    Args:
        sigma: the known noise standard deviation, > 0.
    """

    name = "gaussian"

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"likelihood.sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        residual = (x.unsqueeze(1) - u) / self.sigma
        normaliser = math.log(self.sigma) + 0.5 * math.log(2.0 * math.pi)
        return -(0.5 * residual.square() + normaliser).sum(-1)

    def value_and_grad_u(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(log f(x | u) (B, C), ∂log f/∂u = (x − u) / sigma² (B, C, P)) without autograd (fast Langevin path)."""
        residual = x.unsqueeze(1) - u
        scaled = residual / self.sigma
        normaliser = math.log(self.sigma) + 0.5 * math.log(2.0 * math.pi)
        terms = scaled.squeeze(-1) if u.shape[-1] == 1 else scaled  # no reduction kernel over one column
        log_prob = -(0.5 * terms.square() + normaliser)
        if u.shape[-1] != 1:
            log_prob = log_prob.sum(-1)
        return log_prob, residual.div_(self.sigma**2)

    def mean(self, u: Tensor) -> Tensor:
        """E[x | u] = u."""
        return u

    def noise_sd(self, x: Tensor) -> float:
        """The known sigma (x is not read)."""
        return self.sigma


class Bernoulli(Likelihood):
    """x | u ~ Bernoulli(sigmoid(u)) per pixel, u the logits: log f = Σ_j x_j u_j − softplus(u_j).

    The form x·u − softplus(u) never forms sigmoid(u) or log(0), so it is stable for any logit, and it
    accepts continuous x in [0, 1] (the paper's MNIST pixels), where it is the negative binary
    cross-entropy rather than a probability of the pixels.
    """

    name = "bernoulli"
    mean_name = "prob"

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        return (x.unsqueeze(1) * u - torch.nn.functional.softplus(u)).sum(-1)

    @classmethod
    def support_violation(cls, values: np.ndarray) -> tuple[np.ndarray, str] | None:
        """Cells outside [0, 1] (0/1 values and grey levels in between are fine)."""
        bad = (values < 0) | (values > 1)
        return (bad, "likelihood=bernoulli needs 0/1 values (or grey levels in [0, 1])") if bad.any() else None

    @classmethod
    def describe_violation(cls, value: float) -> str:
        return "outside [0, 1]"

    def mean(self, u: Tensor) -> Tensor:
        """E[x | u] = sigmoid(u), the probability."""
        return torch.sigmoid(u)


class CountLikelihood(Likelihood):
    """Counts 0, 1, 2, ... with u = h(z) the log of their mean: the support check and the mean link of Poisson and
    negative binomial data (a base without a ``name``: not an option of its own)."""

    mean_name = "rate"

    @classmethod
    def support_violation(cls, values: np.ndarray) -> tuple[np.ndarray, str] | None:
        """Cells that are negative or not an integer."""
        bad = _count_violation(values)
        return (
            (bad, f"likelihood={cls.name} needs counts 0, 1, 2, ... in every observation column") if bad.any() else None
        )

    @classmethod
    def describe_violation(cls, value: float) -> str:
        return _describe_count(value)

    def mean(self, u: Tensor) -> Tensor:
        """E[x | u] = exp(u), the rate."""
        return torch.exp(u)


class Poisson(CountLikelihood):
    """x | u ~ Poisson(exp(u)) per coordinate, u the log-rates; x non-negative integer counts."""

    name = "poisson"

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        x = x.unsqueeze(1)
        return (x * u - u.exp() - torch.lgamma(x + 1.0)).sum(-1)


class Binomial(Likelihood):
    """x | u ~ Binomial(n, sigmoid(u)): k successes out of n trials, u the logit. Rows carry their number of trials
    after the successes (``row_columns = ("trials",)``); lme4's ``cbind(k, n - k)`` response.

    log f = k·u − n·softplus(u) + log C(n, k), stable for any logit (no sigmoid, no log(0)).
    """

    name = "binomial"
    row_columns = ("trials",)
    mean_name = "prob"

    def param_dim(self, data_dim: int) -> int:
        return data_dim - 1

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        successes, trials = x[:, :-1].unsqueeze(1), x[:, -1:].unsqueeze(1)
        choose = torch.lgamma(trials + 1.0) - torch.lgamma(successes + 1.0) - torch.lgamma(trials - successes + 1.0)
        return (successes * u - trials * torch.nn.functional.softplus(u) + choose).sum(-1)

    @classmethod
    def support_violation(cls, values: np.ndarray) -> tuple[np.ndarray, str] | None:
        """Successes that are not counts, or more than the trials (last column); trials that are not counts."""
        successes, trials = values[:, :-1], values[:, -1:]
        bad = np.zeros(values.shape, dtype=bool)
        bad[:, :-1] = _count_violation(successes) | (successes > trials)
        bad[:, -1] = _count_violation(values[:, -1])
        phrase = "likelihood=binomial needs counts of successes 0, 1, ... at most the number of trials"
        return (bad, phrase) if bad.any() else None

    @classmethod
    def describe_violation(cls, value: float) -> str:
        return "which is not a count of successes within its trials"

    def mean(self, u: Tensor) -> Tensor:
        """E[x | u] / n = sigmoid(u), the probability."""
        return torch.sigmoid(u)


class HeteroscedasticGaussian(Likelihood):
    """x_i | u_i ~ N(u_i, sd_i² I) with a known noise sd per data point (the heteroscedastic normal means).

    The data carry the sd as their last column: x is (B, D + 1) = (measurements, sd), so the encoder sees
    each point's precision too, and the decoder outputs P = D means.
    """

    name = "gaussian_hetero"
    row_columns = ("sd",)

    def param_dim(self, data_dim: int) -> int:
        if data_dim < 2:
            raise ValueError("a heteroscedastic Gaussian needs at least one measurement column and the sd column")
        return data_dim - 1

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        values, sd = x[:, :-1].unsqueeze(1), x[:, -1:].unsqueeze(1)
        residual = (values - u) / sd
        return -(0.5 * residual.square() + sd.log() + 0.5 * math.log(2.0 * math.pi)).sum(-1)

    def value_and_grad_u(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(log f(x | u) (B, C), ∂log f/∂u = (x − u) / sd² (B, C, P)) without autograd (fast Langevin path)."""
        values, sd = x[:, :-1].unsqueeze(1), x[:, -1:].unsqueeze(1)
        residual = values - u
        scaled = residual / sd
        log_prob = -(0.5 * scaled.square() + sd.log() + 0.5 * math.log(2.0 * math.pi)).sum(-1)
        return log_prob, scaled.div_(sd)

    @classmethod
    def support_violation(cls, values: np.ndarray) -> tuple[np.ndarray, str] | None:
        """Rows laid out as x, (measurements, sd): an sd (last column) that is not > 0. Measurements may be
        any real number, so pass the sd column last, not the measurement columns alone."""
        bad = np.zeros(values.shape, dtype=bool)
        bad[:, -1] = ~(values[:, -1] > 0)
        return (
            (bad, f"likelihood={cls.name} needs a noise standard deviation > 0 in the sd column") if bad.any() else None
        )

    @classmethod
    def describe_violation(cls, value: float) -> str:
        return "which is not > 0"

    def mean(self, u: Tensor) -> Tensor:
        """E[x | u] = u."""
        return u

    def noise_sd(self, x: Tensor) -> float:
        """The root mean square of the per-row sds (the ``sd`` row column), in float64."""
        return float(self.row_column(x, "sd").double().square().mean().sqrt())


def _safe_exp(eta: Tensor, cap: float) -> Tensor:
    """exp(eta) for eta <= cap, and its second-order Taylor continuation exp(cap)(1 + d + d²/2), d = eta − cap,
    above: finite in float32 for any finite eta, still increasing and convex with a matching first and second
    derivative at cap, so gradients keep pushing a too-large linear predictor down instead of becoming inf/NaN."""
    excess = (eta - cap).clamp(min=0.0)
    return torch.exp(eta.clamp(max=cap)) * (1.0 + excess + 0.5 * excess.square())


class PoissonGLMM(Likelihood):
    """Poisson GLMM: y | u ~ Poisson(exp(x·beta + zeta·u)) with fixed effects beta learned with the decoder.

    An observation row holds [y, x_1..x_p, zeta_1..zeta_q]: the count, ``num_fixed`` fixed-effect covariates
    and q random-effect covariates; the decoder's output u (q values) is the random effect (Qiu & Wang 2019,
    Section 5.2). beta (p,) is an ``nn.Parameter`` of this module, so it is part of theta and trained by both
    phases.

    Numerical safety: log f = y·eta − exp(eta) − log(y!) is evaluated with exp replaced above
    ``max_linear_predictor`` by its quadratic Taylor continuation (see ``_safe_exp``). Below the cap (the
    whole range of sensible models: exp(30) ≈ 1e13 counts) the value is exact; above it, values and gradients
    stay finite in float32 where exp would overflow at eta ≈ 88.7 and poison the Langevin chains with inf.
    log(y!) is ``lgamma(y + 1)``, exact for large counts.

    Args:
        num_fixed: p, the number of fixed-effect covariates (set from the data).
        max_linear_predictor: the cap above which exp is continued quadratically.

    ``mean(u)`` raises: the mean of y is exp(x·beta + zeta·u), which needs the row's covariates, so there is no
    mean of u alone (``mean_name`` is None); use ``linear_predictor(x, u).exp()``. ``observations(x)`` is the
    whole row x, covariates included, as the base class gives.
    """

    name = "poisson_glmm"

    def __init__(self, num_fixed: int, max_linear_predictor: float = 30.0):
        super().__init__()
        if num_fixed < 0:
            raise ValueError(f"num_fixed must be >= 0, got {num_fixed}")
        self.num_fixed = int(num_fixed)
        self.max_linear_predictor = float(max_linear_predictor)
        self.beta = nn.Parameter(torch.zeros(self.num_fixed))

    def param_dim(self, data_dim: int) -> int:
        num_random = data_dim - 1 - self.num_fixed
        if num_random < 1:
            raise ValueError(f"a GLMM row needs 1 + {self.num_fixed} + q columns with q >= 1, got {data_dim}")
        return num_random

    def linear_predictor(self, x: Tensor, u: Tensor) -> Tensor:
        """eta = x·beta + zeta·u. Args: x (B, D) rows [y, x, zeta]; u (B, C, q). Returns (B, C)."""
        fixed = x[:, 1 : 1 + self.num_fixed] @ self.beta
        random = (x[:, 1 + self.num_fixed :].unsqueeze(1) * u).sum(-1)
        return fixed.unsqueeze(1) + random

    def encoder_input(self, x: Tensor) -> Tensor:
        """Counts enter the encoder as log(1 + y): heavy-tailed random effects give counts in the tens of
        thousands, which as raw inputs saturate the encoder and overflow its log-variance."""
        return torch.cat([torch.log1p(x[:, :1]), x[:, 1:]], dim=1)

    @classmethod
    def support_violation(cls, values: np.ndarray) -> tuple[np.ndarray, str] | None:
        """Rows [y, covariates...]: a response y (column 0) that is negative or not an integer; the covariates
        may be any real number."""
        bad = np.zeros(values.shape, dtype=bool)
        bad[:, 0] = _count_violation(values[:, 0])
        return (bad, f"likelihood={cls.name} needs counts 0, 1, 2, ... in the response column") if bad.any() else None

    @classmethod
    def describe_violation(cls, value: float) -> str:
        return _describe_count(value)

    def mean(self, u: Tensor) -> Tensor:
        raise NotImplementedError(
            "PoissonGLMM: the mean of y is exp(x·beta + zeta·u) and needs the row's "
            "covariates; use linear_predictor(x, u).exp()"
        )

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        eta = self.linear_predictor(x, u)
        counts = x[:, :1]
        return counts * eta - _safe_exp(eta, self.max_linear_predictor) - torch.lgamma(counts + 1.0)

    def value_and_grad_u(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(log f(x | u) (B, C), ∂log f/∂u = (y − safe_exp'(eta)) · zeta (B, C, q)) without autograd (the fast
        Langevin path); safe_exp' is exp below the cap and exp(cap)(1 + d) above, d = eta − cap."""
        eta = self.linear_predictor(x, u)
        counts = x[:, :1]
        cap = self.max_linear_predictor
        excess = (eta - cap).clamp(min=0.0)
        capped_exp = torch.exp(eta.clamp(max=cap))
        log_prob = counts * eta - capped_exp * (1.0 + excess + 0.5 * excess.square()) - torch.lgamma(counts + 1.0)
        rate_slope = capped_exp.mul_(1.0 + excess)
        zeta = x[:, 1 + self.num_fixed :].unsqueeze(1)
        return log_prob, (counts - rate_slope).unsqueeze(-1) * zeta


class NegativeBinomial(CountLikelihood):
    """x | u ~ NegativeBinomial with mean mu = exp(u) and dispersion r per coordinate: over-dispersed counts,
    Var[x | u] = mu + mu²/r (r → ∞ is the Poisson). u is the log-mean; r = exp(log_dispersion) (torch's
    ``total_count``) is one ``nn.Parameter`` learned with the decoder (part of theta, like PoissonGLMM's beta).

    log f = lgamma(x + r) − lgamma(r) − lgamma(x + 1) + r·log(r / (r + mu)) + x·log(mu / (r + mu)), evaluated as
    lgamma terms + x·t − (x + r)·softplus(t), t = u − log r (log(mu / (r + mu)) = logsigmoid(t) = t − softplus(t),
    log(r / (r + mu)) = −softplus(t)): no exp(u), no log(0), stable for any u. The lgamma terms do not depend on u;
    they are computed once per row (not per chain) in float64, since lgamma(x + r) − lgamma(r) cancels badly in
    float32 for large r.

    Counts enter the encoder as log(1 + x): over-dispersed counts are heavy-tailed, and raw large counts
    saturate the encoder (as for PoissonGLMM).

    Args:
        dispersion: the initial r, > 0 (1.0: variance mu + mu²).
    """

    name = "negative_binomial"

    def __init__(self, dispersion: float = 1.0):
        super().__init__()
        if not (math.isfinite(dispersion) and dispersion > 0):
            raise ValueError(f"likelihood.dispersion must be a finite number > 0, got {dispersion}")
        self.log_dispersion = nn.Parameter(torch.tensor(math.log(dispersion)))

    @property
    def dispersion(self) -> Tensor:
        """r = exp(log_dispersion), a 0-dim tensor (with autograd)."""
        return self.log_dispersion.exp()

    def param_dim(self, data_dim: int) -> int:
        return data_dim

    def _normaliser(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """lgamma(x + r) − lgamma(r) − lgamma(x + 1), (B, 1, D), computed in float64."""
        counts = x.unsqueeze(1).double()
        r = self.log_dispersion.double().exp()
        return (torch.lgamma(counts + r) - torch.lgamma(r) - torch.lgamma(counts + 1.0)).to(dtype)

    def log_prob(self, x: Tensor, u: Tensor) -> Tensor:
        log_r = self.log_dispersion.to(u.dtype)
        t = u - log_r
        counts = x.unsqueeze(1)
        terms = counts * t - (counts + log_r.exp()) * torch.nn.functional.softplus(t)
        return (self._normaliser(x, terms.dtype) + terms).sum(-1)

    def value_and_grad_u(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(log f(x | u) (B, C), ∂log f/∂u = x − (x + r)·sigmoid(u − log r) (B, C, P)) without autograd (the
        fast Langevin path); r is held fixed."""
        log_r = self.log_dispersion.detach().to(u.dtype)
        t = u - log_r
        counts = x.unsqueeze(1)
        weight = counts + log_r.exp()
        terms = counts * t - weight * torch.nn.functional.softplus(t)
        log_prob = (self._normaliser(x, terms.dtype).detach() + terms).sum(-1)
        return log_prob, counts - weight * torch.sigmoid(t)

    def encoder_input(self, x: Tensor) -> Tensor:
        """log(1 + x): heavy-tailed counts as raw inputs saturate the encoder."""
        return torch.log1p(x)
