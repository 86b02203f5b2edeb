import torch
from torch import distributions as D

from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.model import standard_normal_log_prob


def test_gaussian_matches_torch_distributions():
    x = torch.randn(6, 3)
    u = torch.randn(6, 4, 3)
    for sigma in (0.3, 1.0, 2.5):
        expected = D.Normal(u, sigma).log_prob(x.unsqueeze(1)).sum(-1)
        assert torch.allclose(Gaussian(sigma).log_prob(x, u), expected, atol=1e-5)


def test_standard_normal_prior_matches_torch_distributions():
    z = torch.randn(5, 2, 3)
    expected = D.MultivariateNormal(torch.zeros(3), torch.eye(3)).log_prob(z)
    assert torch.allclose(standard_normal_log_prob(z), expected, atol=1e-5)
