"""The marginal likelihood log p(x) by importance sampling, the encoder (mixed with the prior) as proposal: the one
estimator of held-out and training likelihoods (``test_nll`` of images, ``train_nll`` of every task, ``almond
evaluate``).

For a data point x and K draws z_k ~ q(z | x) from the encoder,

    log p̂(x) = logsumexp_k [log f(x | h(z_k)) + log N(z_k; 0, I) − log q(z_k | x)] − log K,

an estimate of log p(x) whose expectation lies below log p(x) (Jensen) by a gap that shrinks as K grows
(Burda et al. 2016, the IWAE bound).

ALMOND does not train the encoder, so after ALMOND has moved the decoder the encoder can be a poor proposal:
where it misses posterior mass the weights are heavy-tailed and log p̂ comes out far too low (a GLMM fit read
0.07 nats per row low). ``prior_fraction`` = a makes the proposal the defensive mixture (Hesterberg 1995)
a·N(0, I) + (1 − a)·q(z | x): the first round(a·K) draws come from the prior, the rest from the encoder, and every
weight divides by the mixture's density (the balance heuristic, unbiased for p(x) with this fixed allocation).
A weight is then at most f(x | h(z)) / a, whatever the encoder; where the encoder is good the prior draws carry
little weight and the estimate costs the precision of a·K draws.

``test_nll`` is the mean of −log p̂ over the held-out images in nats per image, and ``test_nll_se`` its standard
error over images. Image i's draws come from a CPU generator seeded by ``evaluation.seed`` + i, so the VAE warm
start and ALMOND (which share the encoder: ALMOND does not train it) are scored with the same K, the same images
and the same draws.

Units of several rows (``model.units``): x is then the rows and ``unit_index`` maps them to units; the estimate is
per unit, log p̂(x_unit) with f(x_unit | h(z)) = Π_{r in unit} f(x_r | h(z)) and q(z | x_unit) the encoder's
combination of the unit's rows (``LatentVariableModel.encode``), and unit i's draws come from seed + i. With every
row its own unit (``unit_index`` None) it is the estimate above, row by row.

The same weights give the self-normalised importance estimate of the posterior mean E[z | x] under the
model's own decoder, which the latent map uses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .model import LOG_2PI, LatentVariableModel, evaluation_mode, standard_normal_log_prob
from .units import UnitRows, sum_over_rows


class MarginalEstimate(NamedTuple):
    """Per-image results of ``estimate_log_marginal``.

    Attributes:
        log_marginal: (n,) log p̂(x) per image, in nats.
        posterior_mean: (n, d) self-normalised importance estimate of E[z | x].
        mc_variance: (n,) delta-method Monte Carlo variance of log p̂(x): Var(w) / (K · mean(w)²).
        posterior_mean_u: (n, P) the same estimate of E[h(z) | x], the posterior mean of the decoder's output (the
            empirical-Bayes estimate of u_i); None unless asked for.
    """

    log_marginal: Tensor
    posterior_mean: Tensor
    mc_variance: Tensor
    posterior_mean_u: Tensor | None = None


def gaussian_log_prob(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mean, diag exp(log_var)) summed over the last dimension. Args: z (B, K, d), mean, log_var (B, d)."""
    mean, log_var = mean.unsqueeze(1), log_var.unsqueeze(1)
    return -0.5 * (((z - mean).square() / log_var.exp()) + log_var + LOG_2PI).sum(-1)


@torch.no_grad()
def estimate_log_marginal(
    model: LatentVariableModel,
    x: Tensor,
    num_samples: int,
    seed: int,
    chunk: int = 4096,
    with_mean_u: bool = False,
    prior_fraction: float = 0.0,
    unit_index: Tensor | None = None,
) -> MarginalEstimate:
    """Importance-sampled log p(x) for each row of ``x`` (each unit's rows where ``unit_index`` groups them), with
    q(z | x) (mixed with the prior) as proposal.

    Args:
        model: the fitted model; it is evaluated in eval mode.
        x: (n, D) held-out observations, on the model's device.
        num_samples: K >= 1 importance draws per image.
        seed: image i's draws come from a CPU generator seeded by seed + i (the same draws on any device and
            for any batching).
        chunk: decoder evaluations (images × K) per batch; bounds memory (units × K with units; their rows' likelihood
            terms add rows-per-unit times that).
        with_mean_u: also estimate E[h(z) | x] (``posterior_mean_u``).
        prior_fraction: a in [0, 1), the prior's share of the defensive mixture proposal (module docstring);
            0 proposes from the encoder alone.
        unit_index: (n,) each row's unit 0..U-1; None: every row its own unit.

    Returns:
        A ``MarginalEstimate`` of tensors on the CPU, one entry per unit (per row when ``unit_index`` is None).
    """
    if not 0.0 <= prior_fraction < 1.0:
        raise ValueError(f"prior_fraction must be in [0, 1), got {prior_fraction}")
    from_prior = round(prior_fraction * num_samples)
    generator = torch.Generator()
    images_per_batch = max(1, chunk // num_samples)
    unit_rows = None if unit_index is None else UnitRows(unit_index)
    num_units = x.shape[0] if unit_rows is None else unit_rows.num_units
    log_marginals, means, variances, means_u = [], [], [], []
    with evaluation_mode(model):
        for start in range(0, num_units, images_per_batch):
            if unit_rows is None:
                batch, units = x[start : start + images_per_batch], None
                mean, log_var = model.encode(batch)  # the encoder fed as in training
            else:
                chunk_units = torch.arange(start, min(start + images_per_batch, num_units))
                rows, units = unit_rows.of(chunk_units)
                batch, units = x[rows.to(x.device)], units.to(x.device)
                mean, log_var = model.encode(batch, units, chunk_units.shape[0])
            # Image i's draws come from seed + i alone: the same draws whatever the batching or nll_images.
            noise = torch.stack(
                [
                    torch.randn((num_samples, mean.shape[-1]), generator=generator.manual_seed(seed + i))
                    for i in range(start, start + mean.shape[0])
                ]
            )
            noise = noise.to(device=mean.device, dtype=mean.dtype)
            z = mean.unsqueeze(1) + (0.5 * log_var).exp().unsqueeze(1) * noise
            z[:, :from_prior] = noise[:, :from_prior]
            u = model.decoder(z)
            log_prior = standard_normal_log_prob(z)
            log_proposal = gaussian_log_prob(z, mean, log_var)
            if from_prior:
                share = from_prior / num_samples
                log_proposal = torch.logaddexp(log_prior + math.log(share), log_proposal + math.log1p(-share))
            if units is None:
                log_lik = model.likelihood.log_prob(batch, u)
            else:  # each row reads its unit's u; a unit's log f is the sum over its rows
                log_lik = sum_over_rows(model.likelihood.log_prob(batch, u.index_select(0, units)), units, u.shape[0])
            log_weight = (log_lik + log_prior - log_proposal).double()
            log_marginal = torch.logsumexp(log_weight, dim=1) - math.log(num_samples)
            normalised = torch.softmax(log_weight, dim=1)
            # Relative weights w_k / mean(w): their variance over k gives the MC variance of log p̂ (delta method).
            relative = (log_weight - log_marginal.unsqueeze(1)).exp()
            variance = relative.var(dim=1, unbiased=num_samples > 1) / num_samples
            log_marginals.append(log_marginal.cpu())
            means.append((normalised.unsqueeze(-1) * z.double()).sum(1).float().cpu())
            variances.append(variance.cpu())
            if with_mean_u:
                means_u.append((normalised.unsqueeze(-1) * u.double()).sum(1).cpu())
    return MarginalEstimate(
        torch.cat(log_marginals), torch.cat(means), torch.cat(variances), torch.cat(means_u) if with_mean_u else None
    )


def estimate_with(
    evaluation, model: LatentVariableModel, x: Tensor, with_mean_u: bool = False, unit_index: Tensor | None = None
) -> MarginalEstimate:
    """``estimate_log_marginal`` with the ``evaluation`` config's K, seed, chunk and prior fraction."""
    prior_fraction = float(evaluation.get("nll_prior_fraction", 0.0))  # absent in runs saved before the key
    return estimate_log_marginal(
        model,
        x,
        int(evaluation.nll_samples),
        int(evaluation.seed),
        int(evaluation.nll_chunk),
        with_mean_u=with_mean_u,
        prior_fraction=prior_fraction,
        unit_index=unit_index,
    )


def nll_summary(estimate: MarginalEstimate, prefix: str = "test") -> dict[str, float]:
    """``<prefix>_nll`` (mean −log p̂ in nats per data point) and ``<prefix>_nll_se`` (its standard error over
    data points)."""
    nll = -estimate.log_marginal
    count = nll.numel()
    se = float(nll.std(unbiased=True)) / math.sqrt(count) if count > 1 else float("nan")
    return {f"{prefix}_nll": float(nll.mean()), f"{prefix}_nll_se": se}
