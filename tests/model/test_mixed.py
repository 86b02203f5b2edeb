"""The mixed model (``model/mixed.py``): its log-likelihood against a hand-written loop over rows, the decoders'
random-effect laws, the table encoder, and the ``Binomial`` family it brings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from almond_cli.model.likelihoods import Binomial, Gaussian, Poisson
from almond_cli.model.mixed import (
    MixedLayout,
    MixedLikelihood,
    MixedLinearDecoder,
    MixedMLPDecoder,
    MixedModel,
    MixedTableEncoder,
)

# Two crossed factors: "a" with a random slope block (1 + x | a), q = 2, and "b" with a random intercept.
BLOCKS = [("a", ("(Intercept)", "x"), 3), ("b", ("(Intercept)",), 4)]
NUM_FIXED = 2
L_A = torch.tensor([[0.7, 0.0], [-0.3, 0.4]])
L_B = torch.tensor([[0.6]])
BETA = torch.tensor([0.2, -0.5])


def _rows(family: str, n: int = 24, seed: int = 0) -> torch.Tensor:
    """Rows laid out as MixedLayout says: [y (, trials), offset, X (p), Z_a (2), Z_b (1), level a, level b]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen)
    offset = 0.1 * torch.randn(n, generator=gen)
    level_a = torch.arange(n) % 3
    level_b = (torch.arange(n) // 3) % 4  # every (a, b) pair occurs: crossed
    if family == "poisson":
        family_rows = [torch.poisson(torch.full((n,), 2.0), generator=gen)]
    elif family == "binomial":
        trials = torch.randint(1, 12, (n,), generator=gen).float()
        family_rows = [torch.floor(trials * torch.rand(n, generator=gen)), trials]
    else:
        family_rows = [torch.randn(n, generator=gen) * 2.0]
    columns = [
        *family_rows,
        offset,
        torch.ones(n),
        x,
        torch.ones(n),
        x,
        torch.ones(n),
        level_a.float(),
        level_b.float(),
    ]
    return torch.stack(columns, 1)


def _model(family: str, decoder_cls=MixedLinearDecoder) -> MixedModel:
    family_lik = {"poisson": Poisson(), "binomial": Binomial(), "gaussian": Gaussian()}[family]
    layout = MixedLayout.of(BLOCKS, NUM_FIXED, 2 if family == "binomial" else 1)
    decoder = decoder_cls(layout.plain())
    with torch.no_grad():
        decoder.factors[0].copy_(L_A + torch.triu(torch.ones(2, 2), 1) * 5.0)  # above the diagonal: must be ignored
        decoder.factors[1].copy_(L_B)
    likelihood = MixedLikelihood(family_lik, layout, BETA, sigma_start=1.7)
    return MixedModel(MixedTableEncoder(layout.latent_dim), decoder, likelihood)


def _hand_log_lik(family: str, rows: torch.Tensor, z: torch.Tensor, sigma: float = 1.7) -> torch.Tensor:
    """Σ_i log f(y_i | eta_i) for one latent vector z (d,), written row by row in float64, scipy's densities."""
    rows, z = rows.double(), z.double()
    u_a = z[:6].reshape(3, 2) @ L_A.double().T  # level g: L z_g
    u_b = z[6:10].reshape(4, 1) @ L_B.double().T
    width = 2 if family == "binomial" else 1
    total = 0.0
    for row in rows.tolist():
        offset, fixed = row[width], row[width + 1 : width + 3]
        z_a, z_b = row[width + 3 : width + 5], row[width + 5]
        level_a, level_b = int(row[width + 6]), int(row[width + 7])
        eta = offset + sum(f * b for f, b in zip(fixed, BETA.double().tolist()))
        eta += z_a[0] * float(u_a[level_a, 0]) + z_a[1] * float(u_a[level_a, 1]) + z_b * float(u_b[level_b, 0])
        if family == "poisson":
            total += stats.poisson.logpmf(row[0], math.exp(eta))
        elif family == "binomial":
            total += stats.binom.logpmf(row[0], row[1], 1.0 / (1.0 + math.exp(-eta)))
        else:
            total += stats.norm.logpdf(row[0], eta, sigma)
    return torch.tensor(total, dtype=torch.float64)


@pytest.mark.parametrize("family", ["poisson", "binomial", "gaussian"])
def test_log_lik_equals_a_loop_over_rows(family):
    model = _model(family).double()
    rows = _rows(family).double()
    z = torch.randn(1, 3, model.layout.latent_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = model.log_lik(rows, z)
    assert got.shape == (1, 3)
    # the residual sd as the float32 log_sigma holds 1.7
    sigma = float(model.likelihood.log_sigma.detach().exp()) if family == "gaussian" else 0.0
    if family == "gaussian":
        assert abs(sigma - 1.7) < 1e-6
    for chain in range(3):
        # float64 throughout: any mismatch of a row, a level or a column is orders of magnitude above 1e-9
        expected = _hand_log_lik(family, rows, z[0, chain], sigma)
        torch.testing.assert_close(got[0, chain], expected, rtol=0, atol=1e-9)


def test_log_lik_sums_each_units_rows():
    """B = 2 units: each unit's log-likelihood is the sum over its own rows only, with its own latent."""
    model = _model("poisson").double()
    rows = _rows("poisson").double()
    units = (torch.arange(rows.shape[0]) >= 10).long()
    z = torch.randn(2, 2, model.layout.latent_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = model.log_lik(rows, z, units)
    assert got.shape == (2, 2)
    for unit, selection in ((0, slice(0, 10)), (1, slice(10, None))):
        for chain in range(2):
            expected = _hand_log_lik("poisson", rows[selection], z[unit, chain])
            torch.testing.assert_close(got[unit, chain], expected, rtol=0, atol=1e-9)


def test_layout_columns_and_latent_blocks():
    layout = MixedLayout.of(BLOCKS, NUM_FIXED, 2)
    assert layout.latent_dim == 3 * 2 + 4 * 1
    assert layout.latent_starts() == [0, 6]
    assert layout.offset_column == 2 and layout.fixed_columns == slice(3, 5)
    assert layout.z_columns(0) == slice(5, 7) and layout.z_columns(1) == slice(7, 8)
    assert (layout.group_column(0), layout.group_column(1), layout.row_width) == (8, 9, 10)
    latent = torch.arange(10.0).reshape(1, 10)
    parts = layout.split(latent)
    assert parts[0].shape == (1, 3, 2) and parts[1].shape == (1, 4, 1)
    assert parts[0][0, 1].tolist() == [2.0, 3.0]  # level 1 of "a": its two terms side by side
    torch.testing.assert_close(layout.join(parts), latent)


def test_linear_decoders_law_is_normal_with_covariance_L_L_transpose():
    decoder = _model("poisson").decoder.double()
    z = torch.randn(50_000, decoder.latent_dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        parts = decoder.layout.split(decoder(z))
    for part, scale in zip(parts, (L_A, L_B)):
        u = part.reshape(-1, part.shape[-1])  # 150k (a) / 200k (b) draws of one level's effects
        covariance = torch.cov(u.T).reshape(part.shape[-1], part.shape[-1])
        # sd of a sample covariance entry <= sqrt(2/n) · 0.5 ≈ 0.002 for n >= 150k; 0.01 is 5 of those.
        torch.testing.assert_close(covariance, (scale @ scale.T).double(), rtol=0, atol=0.01)
        assert u.mean(0).abs().max() < 0.01  # no mean: sd/sqrt(n) <= 0.002
    # and each level is L z of its own coordinates, exactly
    torch.testing.assert_close(parts[0][:, 2, :], z[:, 4:6] @ L_A.double().T)


def test_mlp_decoder_starts_as_the_linear_decoder():
    linear, mlp = _model("poisson").decoder, _model("poisson", MixedMLPDecoder).decoder
    z = torch.randn(200, linear.latent_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(mlp(z), linear(z), rtol=0, atol=0)
    # and the network is there to learn: a non-zero last layer bends the law
    with torch.no_grad():
        mlp.nets[0][-1].bias.fill_(0.3)
        assert (mlp(z) - linear(z)).abs().max() > 0.1


def test_encode_returns_the_table():
    model = _model("poisson")
    with torch.no_grad():
        model.encoder.mean.copy_(torch.linspace(-1, 1, model.layout.latent_dim))
        model.encoder.log_var.copy_(torch.linspace(-3, 0, model.layout.latent_dim))
    rows = _rows("poisson")
    mean, log_var = model.encode(rows)
    assert mean.shape == (1, 10) and log_var.shape == (1, 10)
    torch.testing.assert_close(mean[0], model.encoder.mean.detach())
    torch.testing.assert_close(log_var[0], model.encoder.log_var.detach())
    mean, log_var = model.encode(rows, torch.arange(rows.shape[0]) % 3)
    assert mean.shape == (3, 10)
    torch.testing.assert_close(log_var[2], model.encoder.log_var.detach())
    centre, scale = model.chain_whitening()
    torch.testing.assert_close(centre, model.encoder.mean.detach())
    torch.testing.assert_close(scale, (0.5 * model.encoder.log_var.detach()).exp())


def test_binomial_log_prob_matches_torch_distributions():
    gen = torch.Generator().manual_seed(5)
    trials = torch.randint(0, 30, (40,), generator=gen).double()
    successes = torch.floor(trials * torch.rand(40, generator=gen, dtype=torch.float64))
    logits = 8.0 * torch.randn(40, 3, generator=gen, dtype=torch.float64)  # extreme logits too: stability
    got = Binomial().log_prob(torch.stack([successes, trials], 1), logits.unsqueeze(-1))
    assert got.shape == (40, 3)
    expected = torch.distributions.Binomial(total_count=trials.unsqueeze(1), logits=logits).log_prob(
        successes.unsqueeze(1)
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    probability = torch.sigmoid(logits[:5, 0]).numpy()
    scipy_values = stats.binom.logpmf(successes[:5].numpy(), trials[:5].numpy(), probability)
    np.testing.assert_allclose(got[:5, 0].numpy(), scipy_values, rtol=1e-9, atol=1e-9)


def test_binomial_support_violation_flags_bad_counts():
    assert Binomial.support_violation(np.array([[0.0, 3.0], [3.0, 3.0], [2.0, 5.0]])) is None
    bad = np.array([[4.0, 3.0], [1.5, 3.0], [1.0, 2.5], [-1.0, 3.0], [1.0, 3.0]])
    mask, phrase = Binomial.support_violation(bad)
    assert mask.shape == bad.shape
    assert mask[0, 0] and mask[1, 0] and mask[2, 1] and mask[3, 0]  # k > n, k not a count, n not a count, k < 0
    assert not mask[4].any() and not mask[0, 1] and not mask[1, 1]
    assert "binomial" in phrase
