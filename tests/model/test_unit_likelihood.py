"""Units apart from rows in the model layer: a unit's log-likelihood and ELBO are sums over its rows, an explicit
one-row-per-unit map gives bitwise the results of ``units=None``, the encoder's combination of a unit's rows is
the exact posterior when each row's q is exact (a conjugate Gaussian unit), and so is the per-unit marginal
likelihood."""

from __future__ import annotations

import math

import torch
from torch import nn

from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.marginal import estimate_log_marginal
from almond_cli.model.model import LatentVariableModel, reparameterise
from almond_cli.model.networks import Encoder, MLPDecoder, MLPEncoder
from almond_cli.model.units import UnitRows, sum_over_rows

UNITS = torch.tensor([0, 2, 0, 1, 2, 2, 0, 3])  # rows of 4 units of 3, 1, 3 and 1 rows, interleaved


def make_model(latent_dim=2, data_dim=3, seed=0):
    torch.manual_seed(seed)
    return LatentVariableModel(
        MLPEncoder(data_dim, latent_dim, [6]), MLPDecoder(latent_dim, data_dim, [7, 5]), Gaussian(0.7)
    )


def test_unit_rows_gathers_each_unit_with_all_its_rows_in_the_order_asked():
    rows, local = UnitRows(UNITS).of(torch.tensor([2, 0]))
    assert rows.tolist() == [1, 4, 5, 0, 2, 6] and local.tolist() == [0, 0, 0, 1, 1, 1]
    rows, local = UnitRows(UNITS).of(torch.tensor([3, 1]))
    assert rows.tolist() == [7, 3] and local.tolist() == [0, 1]


def test_a_units_log_likelihood_is_the_sum_of_its_rows():
    model = make_model()
    x = torch.randn(8, 3)
    z = torch.randn(4, 5, 2)
    per_unit = model.log_lik(x, z, UNITS)
    # Each row scored alone on its unit's latents, by the one-row path.
    per_row = model.log_lik(x, z[UNITS])
    expected = torch.stack([per_row[UNITS == unit].sum(0) for unit in range(4)])
    # Both sum the same float32 terms (|term| < 30) in row order; allow a few ulps of the sum.
    torch.testing.assert_close(per_unit, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(
        model.log_joint(x, z, UNITS), expected - 0.5 * (z.square().sum(-1) + 2 * math.log(2 * math.pi))
    )


def test_a_units_elbo_is_the_sum_of_its_rows_expected_log_likelihood_minus_one_kl():
    model = make_model()
    x = torch.randn(8, 3)
    elbo = model.elbo(x, 6, torch.Generator().manual_seed(3), UNITS)
    mean, log_var = model.encode(x, UNITS)
    z = reparameterise(mean, log_var, 6, torch.Generator().manual_seed(3))  # the same draws
    per_row = model.log_lik(x, z[UNITS]).mean(1)
    expected = torch.stack([per_row[UNITS == unit].sum() for unit in range(4)])
    expected = expected - 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1)
    torch.testing.assert_close(elbo, expected, rtol=1e-6, atol=1e-5)  # sums of the same terms in another order


def test_one_row_per_unit_is_bitwise_the_unitless_path():
    model = make_model()
    x = torch.randn(9, 3)
    z = torch.randn(9, 4, 2)
    identity = torch.arange(9)
    assert torch.equal(model.log_lik(x, z, identity), model.log_lik(x, z))
    assert torch.equal(model.log_joint(x, z, identity), model.log_joint(x, z))
    for got, want in zip(model.encode(x, identity), model.encode(x)):
        assert torch.equal(got, want)
    assert torch.equal(
        model.elbo(x, 5, torch.Generator().manual_seed(1), identity), model.elbo(x, 5, torch.Generator().manual_seed(1))
    )
    one = [
        estimate_log_marginal(model, x, 16, 5, chunk=48, with_mean_u=True, unit_index=index)
        for index in (None, identity)
    ]
    for got, want in zip(one[1], one[0]):
        assert torch.equal(got, want)


class ExactRowPosterior(Encoder):
    """q(z | x_r) = p(z | x_r) exactly, for x_r ~ N(a z + b, sigma²), z ~ N(0, 1): precision 1 + a²/sigma², mean
    a (x_r − b) / sigma² / precision."""

    def __init__(self, a: float, b: float, sigma: float):
        super().__init__()
        self.a, self.b, self.sigma = a, b, sigma
        self.unused = nn.Linear(1, 1)  # an encoder has parameters

    def forward(self, x):
        precision = 1.0 + self.a**2 / self.sigma**2
        mean = self.a * (x - self.b) / self.sigma**2 / precision
        return mean, torch.full_like(mean, -math.log(precision))


def conjugate_model(a=1.5, b=0.3, sigma=0.8):
    decoder = MLPDecoder(1, 1, [])
    with torch.no_grad():
        decoder.net[0].weight.fill_(a)
        decoder.net[0].bias.fill_(b)
    return LatentVariableModel(ExactRowPosterior(a, b, sigma), decoder, Gaussian(sigma))


def test_the_encoders_combination_of_exact_row_posteriors_is_the_exact_unit_posterior():
    a, b, sigma = 1.5, 0.3, 0.8
    model = conjugate_model(a, b, sigma)
    x = torch.randn(8, 1, dtype=torch.float64).float() * 2
    mean, log_var = model.encode(x, UNITS)
    for unit in range(4):
        rows = x[UNITS == unit, 0].double()
        precision = 1.0 + rows.numel() * a**2 / sigma**2
        exact_mean = a * (rows - b).sum() / sigma**2 / precision
        # float32 sums of at most 3 terms of size ~5: a few ulps.
        assert math.isclose(float(mean[unit, 0]), float(exact_mean), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(float(log_var[unit, 0]), -math.log(precision), rel_tol=1e-5, abs_tol=1e-6)


def test_the_per_unit_marginal_likelihood_is_exact_with_the_exact_posterior_as_proposal():
    """With q the exact posterior every importance weight equals p(x_unit), so the estimate is exact to rounding:
    x_unit ~ N(b·1, sigma² I + a² 11ᵀ)."""
    a, b, sigma = 1.5, 0.3, 0.8
    model = conjugate_model(a, b, sigma)
    x = torch.randn(8, 1) * 2
    estimate = estimate_log_marginal(model, x, 32, 0, unit_index=UNITS)
    assert estimate.log_marginal.shape == (4,)
    for unit in range(4):
        rows = x[UNITS == unit, 0].double()
        covariance = sigma**2 * torch.eye(rows.numel(), dtype=torch.float64) + a**2
        exact = torch.distributions.MultivariateNormal(torch.full_like(rows, b), covariance).log_prob(rows)
        # float32 log weights of size ~10: rounding ~1e-6 relative.
        assert math.isclose(float(estimate.log_marginal[unit]), float(exact), rel_tol=1e-5, abs_tol=1e-5)
        assert float(estimate.mc_variance[unit]) < 1e-10


def test_sum_over_rows_adds_each_rows_value_onto_its_unit():
    values = torch.arange(8.0).unsqueeze(1)
    assert sum_over_rows(values, UNITS, 4).squeeze(1).tolist() == [0 + 2 + 6, 3, 1 + 4 + 5, 7]
