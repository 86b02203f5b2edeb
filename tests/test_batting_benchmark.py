"""benchmarks/batting.py's quadrature of the marginal likelihood over a 1-d latent, against a model whose marginal is
known in closed form. No fit runs here (milliseconds)."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import LinearDecoder, MLPEncoder

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "batting.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("batting_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quadrature_is_the_closed_form_marginal_of_a_linear_gaussian_model(bench):
    # u = 0.05 z + 0.5, x ~ N(u, 0.02²): x ~ N(0.5, 0.05² + 0.02²), as narrow as a batting average of 600 at-bats
    torch.manual_seed(0)
    decoder = LinearDecoder(1, 1).double()  # then filled: 0.05 rounded to float32 would shift log p by 1e-7
    with torch.no_grad():
        decoder.linear.weight.fill_(0.05)
        decoder.linear.bias.fill_(0.5)
    model = LatentVariableModel(MLPEncoder(1, 1, [4]).double(), decoder, Gaussian(sigma=0.02))
    x = torch.tensor([[0.3], [0.45], [0.5], [0.62], [0.8]], dtype=torch.float64)
    variance = 0.05**2 + 0.02**2
    expected = -0.5 * ((x[:, 0] - 0.5) ** 2 / variance + math.log(2 * math.pi * variance))
    # the trapezoid rule on a smooth integrand over 20,001 nodes: exact to rounding (float64 sums of ~1e4 terms)
    assert torch.allclose(bench.quadrature_log_marginal(model, x), expected, rtol=0, atol=1e-9)
