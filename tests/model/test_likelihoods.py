"""Every likelihood against torch.distributions, its support check, mean, noise sd and the registry.

Tolerances: the comparisons run in float64, where our closed forms and torch's differ only in the order of
a handful of additions of terms of size ≲ 50, i.e. by ≲ 1e-13; rtol/atol = 1e-10 leaves three orders of
margin and still catches any wrong term (the smallest, a log(2π)/2 or an lgamma, is > 1e-1). The original
float32 Gaussian check keeps its 1e-5 (values ≲ 30, float32 spacing there ≈ 2e-6).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import distributions as D

from almond_cli.model import likelihoods
from almond_cli.model.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    Binomial,
    Gaussian,
    HeteroscedasticGaussian,
    Likelihood,
    NegativeBinomial,
    Poisson,
    PoissonGLMM,
    likelihood_class,
    row_column_names,
    target_of,
)
from almond_cli.model.model import standard_normal_log_prob

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "likelihood"
TIGHT = dict(rtol=1e-10, atol=1e-10)
B, C, P = 6, 4, 3


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_matches_torch_distributions():
    torch.manual_seed(0)
    x = torch.randn(6, 3)
    u = torch.randn(6, 4, 3)
    for sigma in (0.3, 1.0, 2.5):
        expected = D.Normal(u, sigma).log_prob(x.unsqueeze(1)).sum(-1)
        assert torch.allclose(Gaussian(sigma).log_prob(x, u), expected, atol=1e-5)


def test_gaussian_in_float64_with_shapes():
    g = _generator(1)
    x = torch.randn(B, P, generator=g, dtype=torch.float64)
    u = torch.randn(B, C, P, generator=g, dtype=torch.float64)
    for sigma in (0.3, 2.5):
        log_prob = Gaussian(sigma).log_prob(x, u)
        assert log_prob.shape == (B, C)
        assert torch.allclose(log_prob, D.Normal(u, sigma).log_prob(x.unsqueeze(1)).sum(-1), **TIGHT)


def test_heteroscedastic_gaussian_matches_torch_normal_with_each_rows_sd():
    g = _generator(2)
    values = torch.randn(B, P, generator=g, dtype=torch.float64)
    sd = 0.2 + torch.rand(B, 1, generator=g, dtype=torch.float64) * 2
    x = torch.cat([values, sd], dim=1)  # (B, P + 1): the sd is the last column
    u = torch.randn(B, C, P, generator=g, dtype=torch.float64)
    likelihood = HeteroscedasticGaussian()
    assert likelihood.param_dim(x.shape[1]) == P
    log_prob = likelihood.log_prob(x, u)
    assert log_prob.shape == (B, C)
    expected = D.Normal(u, sd.unsqueeze(1)).log_prob(values.unsqueeze(1)).sum(-1)
    assert torch.allclose(log_prob, expected, **TIGHT)
    u.requires_grad_(True)
    value, grad = likelihood.value_and_grad_u(x, u)  # the fast Langevin path's value and ∂/∂u
    (expected_grad,) = torch.autograd.grad(likelihood.log_prob(x, u).sum(), u)
    assert torch.allclose(value, expected, **TIGHT) and torch.allclose(grad, expected_grad, **TIGHT)


def test_bernoulli_matches_torch_bernoulli_with_logits_on_binary_data():
    g = _generator(3)
    x = torch.randint(0, 2, (B, P), generator=g).double()
    u = 3 * torch.randn(B, C, P, generator=g, dtype=torch.float64)
    log_prob = Bernoulli().log_prob(x, u)
    assert log_prob.shape == (B, C)
    expected = D.Bernoulli(logits=u).log_prob(x.unsqueeze(1).expand(B, C, P)).sum(-1)
    assert torch.allclose(log_prob, expected, **TIGHT)


def test_poisson_matches_torch_poisson_with_rate_exp_u():
    g = _generator(4)
    x = torch.poisson(torch.full((B, P), 4.0, dtype=torch.float64), generator=g)
    u = torch.randn(B, C, P, generator=g, dtype=torch.float64) + 1.0
    log_prob = Poisson().log_prob(x, u)
    assert log_prob.shape == (B, C)
    expected = D.Poisson(rate=u.exp()).log_prob(x.unsqueeze(1).expand(B, C, P)).sum(-1)
    assert torch.allclose(log_prob, expected, **TIGHT)


def test_standard_normal_prior_matches_torch_distributions():
    torch.manual_seed(0)
    z = torch.randn(5, 2, 3)
    expected = D.MultivariateNormal(torch.zeros(3), torch.eye(3)).log_prob(z)
    assert torch.allclose(standard_normal_log_prob(z), expected, atol=1e-5)


# ----- support checks --------------------------------------------------------------------------------------------
COUNTS = np.array([[0.0, 3.0], [1.0, 12.0], [7.0, 0.0]])


@pytest.mark.parametrize("cls", [Poisson, NegativeBinomial])
@pytest.mark.parametrize(
    "cell,value,reason", [((1, 0), -1.0, "which is negative"), ((2, 1), 2.5, "which is not an integer")]
)
def test_count_likelihoods_flag_negative_and_fractional_counts(cls, cell, value, reason):
    assert cls.support_violation(COUNTS) is None
    values = COUNTS.copy()
    values[cell] = value
    mask, phrase = cls.support_violation(values)
    expected = np.zeros(values.shape, dtype=bool)
    expected[cell] = True
    assert np.array_equal(mask, expected)
    assert phrase == f"likelihood={cls.name} needs counts 0, 1, 2, ... in every observation column"
    assert cls.describe_violation(value) == reason


def test_bernoulli_flags_cells_outside_the_unit_interval_and_accepts_grey_levels():
    assert Bernoulli.support_violation(np.array([[0.0, 1.0], [0.25, 1.0]])) is None
    mask, phrase = Bernoulli.support_violation(np.array([[0.0, 1.5], [-0.1, 1.0]]))
    assert np.array_equal(mask, [[False, True], [True, False]])
    assert phrase == "likelihood=bernoulli needs 0/1 values (or grey levels in [0, 1])"
    assert Bernoulli.describe_violation(1.5) == "outside [0, 1]"


def test_gaussian_accepts_any_real_value():
    assert Gaussian.support_violation(np.array([[-3.5, 1e6], [0.1, -0.0]])) is None


def test_heteroscedastic_gaussian_checks_only_the_sd_column():
    rows = np.array([[-3.5, -2.0, 0.5], [4.25, 1.0, 2.0]])  # negative measurements are fine
    assert HeteroscedasticGaussian.support_violation(rows) is None
    rows[1, -1] = 0.0
    mask, phrase = HeteroscedasticGaussian.support_violation(rows)
    assert np.array_equal(mask, [[False, False, False], [False, False, True]])
    assert "likelihood=gaussian_hetero" in phrase and "> 0" in phrase
    assert HeteroscedasticGaussian.describe_violation(0.0) == "which is not > 0"


def test_messages_read_as_the_data_file_check_words_them():
    """``check_likelihood_domain`` writes "<cell> is {value:g}, {describe_violation(value)}; {phrase}": the
    words users saw before the likelihoods owned their checks."""

    def message(cls, values):
        mask, phrase = cls.support_violation(values)
        row, column = np.argwhere(mask)[0]
        value = values[row, column]
        return f"is {value:g}, {cls.describe_violation(value)}; {phrase}"

    assert message(Poisson, np.array([[1.0, -2.0]])) == (
        "is -2, which is negative; likelihood=poisson needs counts 0, 1, 2, ... in every observation column"
    )
    assert message(Poisson, np.array([[2.5, 1.0]])) == (
        "is 2.5, which is not an integer; likelihood=poisson needs counts 0, 1, 2, ... in every observation column"
    )
    assert message(Bernoulli, np.array([[0.0, 1.5]])) == (
        "is 1.5, outside [0, 1]; likelihood=bernoulli needs 0/1 values (or grey levels in [0, 1])"
    )


# ----- mean, observations, noise sd ------------------------------------------------------------------------------
def test_mean_of_x_given_u_and_its_name():
    u = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(7, 1, 1)
    assert torch.equal(Gaussian(0.5).mean(u), u) and torch.equal(HeteroscedasticGaussian().mean(u), u)
    assert torch.allclose(Poisson().mean(u), u.exp(), **TIGHT)
    assert torch.allclose(NegativeBinomial(2.0).mean(u), u.exp(), **TIGHT)
    assert torch.allclose(Bernoulli().mean(u), 1 / (1 + (-u).exp()), **TIGHT)
    names = {cls: cls.mean_name for cls in LIKELIHOODS.values()}
    assert names == {
        Gaussian: None,
        HeteroscedasticGaussian: None,
        Bernoulli: "prob",
        Poisson: "rate",
        NegativeBinomial: "rate",
        PoissonGLMM: None,
        Binomial: "prob",
    }
    with pytest.raises(NotImplementedError, match="covariates"):
        PoissonGLMM(num_fixed=1).mean(u)


def test_observations_and_noise_sd():
    x = torch.tensor([[0.5, -1.0, 1.0], [2.0, 0.0, 2.0], [-1.0, 3.0, 2.0]])
    hetero = HeteroscedasticGaussian()
    assert torch.equal(hetero.observations(x), x[:, :2])
    assert hetero.noise_sd(x) == pytest.approx(math.sqrt((1 + 4 + 4) / 3), rel=1e-12)  # root mean square sd
    assert hetero.noise_sd(x) == float(x[:, -1].double().square().mean().sqrt())
    assert Gaussian(0.7).noise_sd(x) == 0.7
    for likelihood in (Gaussian(0.7), Bernoulli(), Poisson(), NegativeBinomial(), PoissonGLMM(num_fixed=1)):
        assert likelihood.observations(x) is x
    for likelihood in (Bernoulli(), Poisson(), NegativeBinomial(), PoissonGLMM(num_fixed=1)):
        assert likelihood.noise_sd(x) is None
    assert {cls.name: cls.row_columns for cls in LIKELIHOODS.values() if cls.row_columns} == {
        "gaussian_hetero": ("sd",),
        "binomial": ("trials",),
    }


def test_row_columns_split_a_row_into_measurements_and_named_columns():
    x = torch.tensor([[0.5, -1.0, 1.0], [2.0, 0.0, 2.5]])
    values, columns = HeteroscedasticGaussian.split_row(x)
    assert torch.equal(values, x[:, :2]) and list(columns) == ["sd"] and torch.equal(columns["sd"], x[:, 2])
    assert torch.equal(HeteroscedasticGaussian().row_column(x, "sd"), x[:, 2])
    arrays = x.numpy()  # files split numpy rows the same way
    assert np.array_equal(HeteroscedasticGaussian.observations(arrays), arrays[:, :2])
    values, columns = Poisson.split_row(x)
    assert values is x and columns == {}
    with pytest.raises(KeyError, match="no 'sd' column"):
        Gaussian.row_column(x, "sd")


def test_a_likelihood_that_orders_shared_row_columns_differently_is_refused():
    class Exposure(Likelihood):  # a later likelihood with a new column after the known ones is fine
        name = "test_exposure"
        row_columns = ("trials", "sd", "exposure")

    try:
        assert row_column_names() == ("trials", "sd", "exposure")
        with pytest.raises(TypeError, match="another order"):

            class Reversed(Likelihood):
                name = "test_reversed"
                row_columns = ("sd", "trials")
    finally:
        LIKELIHOODS.pop("test_exposure", None)
        LIKELIHOODS.pop("test_reversed", None)
    assert row_column_names() == ("trials", "sd")


# ----- the registry ---------------------------------------------------------------------------------------------
def test_every_likelihood_is_registered_by_name_and_found_from_its_target():
    assert LIKELIHOODS == {
        "gaussian": Gaussian,
        "gaussian_hetero": HeteroscedasticGaussian,
        "bernoulli": Bernoulli,
        "poisson": Poisson,
        "poisson_glmm": PoissonGLMM,
        "negative_binomial": NegativeBinomial,
        "binomial": Binomial,
    }
    for name, cls in LIKELIHOODS.items():
        assert cls.name == name
        assert likelihood_class(target_of(cls)) is cls
    assert target_of(Poisson) == "almond_cli.model.likelihoods.Poisson"
    assert likelihood_class("almond_cli.model.likelihoods.Nope") is None
    assert likelihood_class("almond_cli.likelihoods.Poisson") is None  # old path: config.py rewrites it first
    assert likelihood_class("") is None
    assert Likelihood not in LIKELIHOODS.values()


def test_every_yaml_option_names_a_registered_likelihood_by_its_file_name():
    options = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
    assert options == sorted(LIKELIHOODS)
    for option in options:
        assert OmegaConf.load(CONFIG_DIR / f"{option}.yaml")["_target_"] == target_of(LIKELIHOODS[option])


def test_a_new_subclass_registers_itself_and_a_taken_name_is_refused():
    try:

        class Exponential(Likelihood):
            name = "test_exponential_only"

        assert LIKELIHOODS["test_exponential_only"] is Exponential
        assert likelihood_class(target_of(Exponential)) is Exponential

        class Unnamed(Poisson):  # inherits a name without claiming it: not registered, Poisson stays
            pass

        assert LIKELIHOODS["poisson"] is Poisson and Unnamed not in LIKELIHOODS.values()
        with pytest.raises(TypeError, match="already taken"):

            class Impostor(Likelihood):
                name = "poisson"

        assert LIKELIHOODS["poisson"] is Poisson
    finally:
        LIKELIHOODS.pop("test_exponential_only", None)
    assert likelihoods.LIKELIHOODS is LIKELIHOODS
