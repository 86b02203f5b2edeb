"""The Poisson GLMM likelihood against torch.distributions.Poisson, its overflow safety, the linear decoder."""

import numpy as np
import pytest
import torch
from torch.distributions import Poisson

from almond_cli.model.likelihoods import PoissonGLMM
from almond_cli.model.networks import LinearDecoder


def _rows(batch: int, p: int, q: int, generator: torch.Generator) -> torch.Tensor:
    counts = torch.poisson(torch.full((batch, 1), 3.0), generator=generator)
    return torch.cat([counts, 0.5 * torch.randn(batch, p + q, generator=generator)], dim=1)


def test_log_prob_matches_torch_poisson():
    generator = torch.Generator().manual_seed(0)
    likelihood = PoissonGLMM(num_fixed=3)
    with torch.no_grad():
        likelihood.beta.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = _rows(7, 3, 2, generator)
    u = torch.randn(7, 4, 2, generator=generator)
    log_prob = likelihood.log_prob(x, u)
    assert log_prob.shape == (7, 4)
    eta = (x[:, 1:4] @ likelihood.beta).unsqueeze(1) + (x[:, None, 4:] * u).sum(-1)
    expected = Poisson(rate=eta.exp()).log_prob(x[:, :1].expand(7, 4))
    assert torch.allclose(log_prob, expected, atol=1e-5)
    assert likelihood.param_dim(x.shape[1]) == 2


def test_large_linear_predictors_stay_finite_with_gradients_pointing_back():
    likelihood = PoissonGLMM(num_fixed=1, max_linear_predictor=30.0)
    x = torch.tensor([[5.0, 0.0, 1.0], [5.0, 0.0, 1.0], [5.0, 0.0, 1.0]])
    u = torch.tensor([[[20.0]], [[100.0]], [[1.0e4]]], requires_grad=True)
    log_prob = likelihood.log_prob(x, u)
    (grad,) = torch.autograd.grad(log_prob.sum(), u)
    assert torch.isfinite(log_prob).all() and torch.isfinite(grad).all()
    # Below the cap the value is exact; above it exp(eta) would overflow float32 (eta > 88.7).
    assert torch.allclose(log_prob[0], Poisson(torch.tensor(20.0).exp()).log_prob(torch.tensor(5.0)), rtol=1e-5)
    assert torch.isinf(torch.exp(torch.tensor(100.0)))
    # The rate term dominates: the gradient pulls every too-large predictor down, harder the larger it is.
    assert (grad < 0).all() and grad[2] < grad[1] < grad[0]


def test_beta_is_a_learned_parameter_and_counts_reach_the_encoder_as_log1p():
    likelihood = PoissonGLMM(num_fixed=2)
    assert [name for name, _ in likelihood.named_parameters()] == ["beta"]
    x = torch.tensor([[24226.0, 0.1, 0.2, 0.3]])
    features = likelihood.encoder_input(x)
    assert torch.allclose(features, torch.tensor([[torch.log1p(torch.tensor(24226.0)).item(), 0.1, 0.2, 0.3]]))


@pytest.mark.parametrize("value,reason", [(-1.0, "which is negative"), (2.5, "which is not an integer")])
def test_support_check_reads_the_response_column_only(value, reason):
    # Rows [y, x, zeta]: negative and fractional covariates are fine, only the count y is checked.
    rows = np.array([[3.0, -0.5, 1.25], [0.0, 2.5, -1.0], [12.0, 0.1, 0.0]])
    assert PoissonGLMM.support_violation(rows) is None
    rows[1, 0] = value
    mask, phrase = PoissonGLMM.support_violation(rows)
    assert np.array_equal(mask, [[False, False, False], [True, False, False], [False, False, False]])
    assert phrase == "likelihood=poisson_glmm needs counts 0, 1, 2, ... in the response column"
    assert PoissonGLMM.describe_violation(value) == reason


def test_glmm_has_no_mean_of_u_alone_and_reads_whole_rows():
    likelihood = PoissonGLMM(num_fixed=1)
    assert likelihood.name == "poisson_glmm" and likelihood.mean_name is None
    assert likelihood.row_columns == () and likelihood.noise_sd(torch.ones(2, 3)) is None
    with pytest.raises(NotImplementedError, match="linear_predictor"):
        likelihood.mean(torch.zeros(2, 1, 1))


def test_linear_decoder_is_affine_with_covariance_a_at():
    torch.manual_seed(0)
    decoder = LinearDecoder(latent_dim=3, output_dim=2)
    z = torch.randn(4, 5, 3)
    u = decoder(z)
    assert u.shape == (4, 5, 2)
    weight, bias = decoder.linear.weight, decoder.linear.bias
    assert torch.allclose(u, z @ weight.T + bias, atol=1e-6)
    assert torch.allclose(decoder.covariance(), weight @ weight.T)
