"""The tabulated Langevin target (langevin/tabulated.py) against the exact decoder: the cubic Hermite error bound,
exactness where the interpolant is exact, the exact path outside the grid, and the same chains as the exact target.

Bounds (per output, spacing Δ): |h − p| ≤ Δ⁴/384 · max|h⁽⁴⁾| and |h' − p'| ≤ √3/216 · Δ³ · max|h⁽⁴⁾|. The bound
tests run in float64, so rounding (~1e-15 relative) is far below the interpolation errors they check (≥ 1e-9).
"""

import math

import pytest
import torch
from conftest import compose_config
from torch import nn

from almond_cli.config import ConfigError, SamplerConfig, validate
from almond_cli.langevin import sampler, tabulated, targets
from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.settings import SamplerSettings
from almond_cli.langevin.tabulated import TabulatedTarget
from almond_cli.model.likelihoods import Bernoulli, Gaussian, NegativeBinomial
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import Decoder, MLPDecoder, MLPEncoder
from almond_cli.training import phases

VALUE_CONSTANT = 1.0 / 384.0
SLOPE_CONSTANT = math.sqrt(3.0) / 216.0


def make_model(hidden, output_dim=1, activation="softplus", latent_dim=1, likelihood=None, seed=0):
    torch.manual_seed(seed)
    model = LatentVariableModel(
        MLPEncoder(output_dim, latent_dim, [5]),
        MLPDecoder(latent_dim, output_dim, hidden, activation),
        likelihood or Gaussian(0.7),
    )
    with torch.no_grad():  # larger weights than the default init: a decoder with curvature, like a trained one
        for parameter in model.decoder.parameters():
            parameter.mul_(2.0)
    return model


class Polynomial(Decoder):
    """h(z) = Σ_k coefficients[k, p] z^k per output p: a decoder whose h⁽⁴⁾ is known in closed form."""

    def __init__(self, coefficients):
        super().__init__()
        self.latent_dim = 1
        self.coefficients = nn.Parameter(torch.as_tensor(coefficients, dtype=torch.float64))

    def forward(self, z):
        powers = torch.stack([z[..., 0] ** k for k in range(self.coefficients.shape[0])], -1)
        return powers @ self.coefficients


class Sine(Decoder):
    """h(z) = sin(z): |h⁽⁴⁾| ≤ 1."""

    def __init__(self):
        super().__init__()
        self.latent_dim = 1
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, z):
        return torch.sin(self.scale * z)


def polynomial_model(coefficients):
    return LatentVariableModel(MLPEncoder(1, 1, [3]), Polynomial(coefficients), Gaussian(1.0)).double()


def exact_value_and_slope(decoder, z):
    """h(z) and h'(z) (N, P) by reverse-mode autograd, independent of the target's forward-mode tabulation."""
    z = z.detach().unsqueeze(-1).requires_grad_(True)
    u = decoder(z)
    slopes = [torch.autograd.grad(u[:, p].sum(), z, retain_graph=True)[0][:, 0] for p in range(u.shape[1])]
    return u.detach(), torch.stack(slopes, -1)


def fourth_derivative_bound(decoder, lower, upper):
    """max over [lower, upper] of |h⁽⁴⁾| per output, by nested autograd at 4,001 points. The points are at least
    125x closer than the grid spacings tested and h⁽⁵⁾ is bounded, so the sampled max is within a few percent of
    the true one; the 10% margin the tests add covers it."""
    z = torch.linspace(lower, upper, 4001, dtype=torch.float64).unsqueeze(-1).requires_grad_(True)
    u = decoder(z)
    bounds = []
    for p in range(u.shape[1]):
        derivative = u[:, p]
        for _ in range(4):
            (derivative,) = torch.autograd.grad(derivative.sum(), z, create_graph=True)
            derivative = derivative[:, 0]
        bounds.append(derivative.detach().abs().max())
    return torch.stack(bounds)


@pytest.mark.parametrize("hidden,output_dim,num_nodes", [([10], 1, 17), ([50, 100, 50], 1, 33), ([6, 5], 3, 17)])
def test_softplus_mlp_within_the_hermite_bound(hidden, output_dim, num_nodes):
    model = make_model(hidden, output_dim).double()
    table = TabulatedTarget(model, torch.zeros(1, output_dim, dtype=torch.float64), -4.0, 4.0, num_nodes)
    z = torch.linspace(-4.0, 4.0, 7919, dtype=torch.float64)  # not aligned with the nodes
    u, slope, outside = table.interpolate(z)
    exact_u, exact_slope = exact_value_and_slope(model.decoder, z)
    assert outside.tolist() in ([], [len(z) - 1])  # z = upper exactly may take the exact path
    fourth = 1.1 * fourth_derivative_bound(model.decoder, -4.0, 4.0)
    value_error, slope_error = (u - exact_u).abs().amax(0), (slope - exact_slope).abs().amax(0)
    assert (value_error <= VALUE_CONSTANT * table.spacing**4 * fourth).all(), (value_error, fourth)
    assert (slope_error <= SLOPE_CONSTANT * table.spacing**3 * fourth).all(), (slope_error, fourth)
    # Interpolation error, not rounding, is what was bounded: the check has room to fail.
    assert value_error.max() > 1e-9


def test_the_bounds_are_attained_by_z_to_the_fourth():
    """h = z⁴ (h⁽⁴⁾ = 24 everywhere): the error is exactly Δ⁴/16 at each cell's midpoint and √3/216·Δ³·24 at
    a + Δ(1/2 ± 1/(2√3)), so both constants and the implementation are checked to rounding."""
    model = polynomial_model([[0.0], [0.0], [0.0], [0.0], [1.0]])
    table = TabulatedTarget(model, torch.zeros(1, 1, dtype=torch.float64), -2.0, 2.0, 9)
    spacing = table.spacing
    left = torch.arange(-2.0, 2.0 - spacing / 2, spacing, dtype=torch.float64)
    midpoints = left + spacing / 2
    u, _, _ = table.interpolate(midpoints)
    torch.testing.assert_close(
        (u[:, 0] - midpoints**4).abs(), torch.full_like(midpoints, 24 * VALUE_CONSTANT * spacing**4), rtol=1e-9, atol=0
    )
    for sign in (-1.0, 1.0):
        points = left + spacing * (0.5 + sign / (2 * math.sqrt(3.0)))
        _, slope, _ = table.interpolate(points)
        torch.testing.assert_close(
            (slope[:, 0] - 4 * points**3).abs(),
            torch.full_like(points, 24 * SLOPE_CONSTANT * spacing**3),
            rtol=1e-9,
            atol=0,
        )


def test_a_cubic_decoder_is_reproduced_exactly():
    """Cubic Hermite interpolation is exact on cubics (h⁽⁴⁾ = 0), for each of two outputs."""
    model = polynomial_model([[0.3, -1.0], [-2.0, 0.5], [0.7, 0.0], [1.5, -0.25]])
    table = TabulatedTarget(model, torch.zeros(1, 2, dtype=torch.float64), -3.0, 3.0, 5)
    z = torch.linspace(-3.0, 3.0, 1001, dtype=torch.float64)
    u, slope, _ = table.interpolate(z)
    exact_u, exact_slope = exact_value_and_slope(model.decoder, z)
    torch.testing.assert_close(u, exact_u, rtol=0, atol=1e-12)
    torch.testing.assert_close(slope, exact_slope, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_nodes", [9, 33, 129])
def test_sine_within_the_bound(num_nodes):
    """h = sin: max|h⁽⁴⁾| = 1, so the bounds are Δ⁴/384 and √3/216 Δ³ with no estimate."""
    model = LatentVariableModel(MLPEncoder(1, 1, [3]), Sine(), Gaussian(1.0)).double()
    table = TabulatedTarget(model, torch.zeros(1, 1, dtype=torch.float64), -5.0, 5.0, num_nodes)
    z = torch.linspace(-5.0, 5.0, 10_007, dtype=torch.float64)
    u, slope, _ = table.interpolate(z)
    assert (u[:, 0] - torch.sin(z)).abs().max() <= VALUE_CONSTANT * table.spacing**4
    assert (slope[:, 0] - torch.cos(z)).abs().max() <= SLOPE_CONSTANT * table.spacing**3


@pytest.mark.parametrize("hidden", [[10], [50, 100, 50]])
def test_value_and_gradient_match_the_exact_target(hidden):
    """float32 at the default 2049 nodes: the interpolation error (≤ ~1e-9 here) is far below float32 rounding,
    so value and gradient agree with the exact fused target to rounding, as test_targets.py's tolerance."""
    model = make_model(hidden)
    x = torch.randn(13, 1) * 2
    z = torch.randn(13, 9, 1) * 2
    with model.frozen():
        table = TabulatedTarget.around(model, x, z, 0.01, 10, 2049)
        reference = sampler.initial_state(z, targets.target_for(model, x))
        tabulated_state = sampler.initial_state(z, table)
    torch.testing.assert_close(tabulated_state.log_joint, reference.log_joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tabulated_state.grad, reference.grad, rtol=1e-5, atol=1e-5)
    # __call__ is the same interpolated function, and its autograd gradient is value_and_grad's.
    z_grad = z.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(table(z_grad).sum(), z_grad)
    torch.testing.assert_close(table(z), tabulated_state.log_joint)
    torch.testing.assert_close(autograd, tabulated_state.grad, rtol=1e-5, atol=1e-5)


def test_particles_outside_the_grid_take_the_exact_path():
    """A grid over [-1, 1] and particles far outside, at its ends and not finite: never extrapolated."""
    model = make_model([10])
    x = torch.randn(4, 1)
    z = torch.linspace(-6.0, 6.0, 4 * 25).reshape(4, 25, 1)
    z[0, 0, 0], z[1, 0, 0], z[2, 0, 0], z[3, 0, 0] = -1.0, 1.0, float("nan"), float("inf")
    with model.frozen():
        table = TabulatedTarget(model, x, -1.0, 1.0, 2049)
        _, _, outside = table.interpolate(z.reshape(-1))
        state = sampler.initial_state(z, table)
        reference = sampler.initial_state(z, targets.target_for(model, x))
    beyond = (~(z.reshape(-1).abs() <= 1.0)).nonzero().squeeze(1)  # beyond the grid or not finite
    assert set(beyond.tolist()) <= set(outside.tolist()) and len(beyond) > 4 * 25 * 2 // 3
    torch.testing.assert_close(state.log_joint, reference.log_joint, rtol=1e-6, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(state.grad, reference.grad, rtol=1e-6, atol=1e-5, equal_nan=True)


def test_the_grid_covers_the_chains_and_where_they_can_go():
    model = make_model([10])
    z = torch.randn(50, 20, 1) * 2
    z[0, 0, 0] = float("nan")  # a diverged chain does not take the grid with it
    table = TabulatedTarget.around(model, torch.zeros(50, 1), z, 0.01, 10, 257)
    finite = z[torch.isfinite(z)]
    margin = tabulated.NUM_SD * math.sqrt(2 * 0.01 * 10) + 0.01 * 10 * tabulated.DRIFT_BOUND
    assert table.lower == pytest.approx(float(finite.min()) - margin)
    assert table.upper == pytest.approx(float(finite.max()) + margin)


@pytest.mark.parametrize("hidden,output_dim", [([10], 1), ([50, 100, 50], 1), ([6, 5], 2)])
def test_same_chains_as_the_exact_target(hidden, output_dim):
    """K = 10 steps from the same start and generator state: per-step differences of ~1e-6 in the gradient,
    compounded through 1 + s·∂²log p ≈ 1 (s = 0.01), stay at rounding level; 1e-4 leaves two orders of margin
    while a wrong slope (an error of order 1e-2 in ∇, see the bound tests' coarse grids) moves chains by ≥ 1e-3."""
    model = make_model(hidden, output_dim)
    x = torch.randn(20, output_dim)
    start = torch.randn(20, 8, 1)
    results = []
    with model.frozen():
        for target in (targets.target_for(model, x), TabulatedTarget.around(model, x, start, 0.01, 10, 2049)):
            generator = torch.Generator().manual_seed(7)
            kept, _ = sampler.run(start, target, 0.01, 10, 5, generator)
            results.append(kept)
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)


def test_almond_update_samples_and_steps_through_the_table(monkeypatch):
    """One SGD update: the tolerances need no change now that the loss reads the table too, since its gradient
    differs from the exact one by float32 rounding (≤ 3e-6 relative, the loss tests below), and lr = 0.01 scales
    that to ~1e-8 in the parameters, far inside rtol 1e-5 / atol 1e-6."""
    built = []
    around = TabulatedTarget.around.__func__

    def recording_around(cls, *args, **kwargs):
        built.append(around(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(TabulatedTarget, "around", classmethod(recording_around))
    model = make_model([10])
    x = torch.randn(30, 1) * 2
    start = torch.randn(30, 10, 1)
    results = {}
    for mode in ("off", "on"):
        trained = make_model([10])
        trained.load_state_dict(model.state_dict())
        chains = PersistentChains(start.clone())
        optimiser = torch.optim.SGD(trained.generative_parameters, lr=0.01)
        loss, _ = phases.almond_update(
            trained,
            optimiser,
            chains,
            torch.arange(30),
            x,
            0.01,
            SamplerSettings(num_steps=10, burn_in=5, tabulate=mode),
            torch.Generator().manual_seed(3),
        )
        results[mode] = (loss, chains.gather(torch.arange(30)), [p.detach().clone() for p in trained.parameters()])
        assert len(built) == (mode == "on")  # the chains moved under the table, and only when asked
    torch.testing.assert_close(results["on"][0], results["off"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["on"][1], results["off"][1], rtol=1e-4, atol=1e-4)
    for on, off in zip(results["on"][2], results["off"][2]):
        torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6)


def test_which_models_are_tabulated():
    assert tabulated.wanted(make_model([10]), "auto")
    assert tabulated.wanted(make_model([10], activation="tanh"), "auto")
    assert not tabulated.wanted(make_model([10]), "off")
    assert not tabulated.wanted(make_model([10], activation="relu"), "auto")  # kinks: no h⁽⁴⁾ bound
    assert tabulated.wanted(make_model([10], activation="relu"), "on")
    assert not tabulated.wanted(make_model([10], latent_dim=2), "auto")
    assert not tabulated.wanted(make_model([10], likelihood=Bernoulli()), "auto")
    with pytest.raises(ValueError, match="one-dimensional"):
        tabulated.wanted(make_model([10], latent_dim=2), "on")
    with pytest.raises(ValueError, match="sampler.tabulate"):
        tabulated.wanted(make_model([10]), "sometimes")


def test_config_keys():
    cfg = compose_config([])
    assert cfg.sampler.tabulate == "auto" and cfg.sampler.table_nodes == 2049
    # A run saved before the key existed is completed from the schema's default: it continues exactly as it ran.
    assert SamplerConfig().tabulate == "off"
    validate(compose_config(["sampler.tabulate=on", "sampler.table_nodes=513"]))
    validate(compose_config(["sampler.tabulate=auto", "latent_dim=2"]))
    for overrides, key in (
        (["sampler.tabulate=sometimes"], "sampler.tabulate"),
        (["sampler.tabulate=on", "latent_dim=2"], "sampler.tabulate"),
        (["sampler.table_nodes=1"], "sampler.table_nodes"),
    ):
        with pytest.raises(ConfigError) as error:
            validate(compose_config(overrides))
        assert error.value.key == key


# The parameter step through the table (tabulated.tabulated_loss). Its decoder gradient is, by construction, the
# exact β-gradient of the INTERPOLATED loss −mean log f(x | p_β(z)), p_β the cubic Hermite interpolant of h_β's
# node values and slopes; the first test checks that identity to float64 rounding on a coarse grid, where it is
# far from the exact gradient. The interpolated loss's gradient then differs from the exact loss's by the Hermite
# error of z ↦ ∇_β h (interpolation commutes with ∇_β): ≤ Δ⁴/384 · max|∂_z⁴ ∇_β h|, plus |∂²log f/∂u²|·|h − p|·|∇_β h|
# for g read at p(z); both O(Δ⁴), which the float64 test at G = 2049 sees as ~1e-12 relative (and 4e-5 at G = 33,
# 2e-7 at G = 129: the Δ⁴ rate). In float32 what remains is rounding of the exact loss's own sums over B·N
# particles (observed ≤ 3e-6 of the largest gradient entry), so float32 checks allow 1e-5 of each tensor's largest
# entry; a missing term (the slope part b_j, a likelihood parameter, the outside particles) moves it by ≥ 1e-3.

LIKELIHOODS = {"gaussian": lambda: Gaussian(0.7), "negative_binomial": lambda: NegativeBinomial(2.0)}


def loss_problem(hidden, output_dim, likelihood, dtype, num_nodes=2049, batch=40, particles=60, spread=2.0):
    """A random softplus decoder, data fitting its likelihood, particles (B, N, 1) and a table around them."""
    model = make_model(hidden, output_dim, likelihood=LIKELIHOODS[likelihood]()).to(dtype)
    generator = torch.Generator().manual_seed(11)
    if likelihood == "negative_binomial":
        x = torch.poisson(torch.full((batch, output_dim), 3.0), generator=generator).to(dtype)
    else:
        x = (torch.randn(batch, output_dim, generator=generator) * 2).to(dtype)
    z = (torch.randn(batch, particles, 1, generator=generator) * spread).to(dtype)
    with model.frozen():
        table = TabulatedTarget.around(model, x, z, 0.01, 10, num_nodes)
    return model, table, x, z


def value_and_gradients(model, loss_fn):
    parameters = model.generative_parameters
    loss = loss_fn()
    return loss.detach(), torch.autograd.grad(loss, parameters)


def hermite_reference_loss(model, table, x, particles):
    """−mean log f(x | p(z)), p built differentiably from h and h' at the table's nodes by the Hermite basis
    formulas (reverse-mode h' with create_graph, P columns one by one), independently of tabulated_loss."""
    batch, count, _ = particles.shape
    nodes = torch.linspace(table.lower, table.upper, table.num_nodes, dtype=torch.float64)
    nodes = nodes.to(particles.dtype).unsqueeze(-1).requires_grad_(True)
    values = model.decoder(nodes)
    slopes = torch.stack(
        [torch.autograd.grad(values[:, p].sum(), nodes, create_graph=True)[0][:, 0] for p in range(values.shape[1])], -1
    )
    z = particles.reshape(-1)
    position = (z - table.lower) / table.spacing
    cell = position.floor().clamp(0, table.num_nodes - 2).long()
    t = (position - cell).unsqueeze(-1)
    h00, h01 = 2 * t**3 - 3 * t**2 + 1, -2 * t**3 + 3 * t**2
    h10, h11 = t**3 - 2 * t**2 + t, t**3 - t**2
    u = h00 * values[cell] + h01 * values[cell + 1] + table.spacing * (h10 * slopes[cell] + h11 * slopes[cell + 1])
    return -model.likelihood.log_prob(x, u.view(batch, count, -1)).mean()


def assert_gradients_close(actual, expected, relative):
    """Per parameter tensor: max |actual − expected| ≤ relative · max |expected| (a scale per tensor, since
    single entries of a sum over particles may cancel to near zero)."""
    for index, (got, want) in enumerate(zip(actual, expected)):
        scale = want.abs().max()
        assert scale > 0, index
        error = (got - want).abs().max()
        assert error <= relative * scale, (index, float(error), float(scale))


CASES = [([10], 1), ([50, 100, 50], 1), ([6, 5], 2)]


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("hidden,output_dim", CASES)
def test_tabulated_loss_is_the_interpolated_loss_with_its_exact_gradient(hidden, output_dim, likelihood):
    """float64, G = 17 (Δ ≈ 1): the surrogate's value and every generative parameter's gradient are those of
    −mean log f(x | p_β(z)) to rounding (1e-10), while p_β is far enough from h that the exact loss's gradient
    differs by > 1e-4: the identity, not closeness to the exact loss, is what is checked."""
    model, table, x, z = loss_problem(hidden, output_dim, likelihood, torch.float64, num_nodes=17)
    assert table.spacing > 0.5
    value, gradients = value_and_gradients(model, lambda: tabulated.tabulated_loss(model, table, x, z))
    reference_value, reference = value_and_gradients(model, lambda: hermite_reference_loss(model, table, x, z))
    _, exact = value_and_gradients(model, lambda: -model.log_lik(x, z).mean())
    torch.testing.assert_close(value, reference_value, rtol=1e-12, atol=0)
    assert_gradients_close(gradients, reference, 1e-10)
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(reference, exact)) > 1e-4


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("hidden,output_dim", CASES)
@pytest.mark.parametrize("dtype,relative", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_tabulated_loss_matches_the_exact_loss(hidden, output_dim, likelihood, dtype, relative):
    """G = 2049: value and every parameter's gradient (decoder and, for negative_binomial, the dispersion) agree
    with −mean log f(x | h(z)) through the network: to the Hermite error in float64 (observed ≤ 1e-11, bound
    1e-9 with two orders of margin), to rounding in float32 (1e-5; see the comment above)."""
    model, table, x, z = loss_problem(hidden, output_dim, likelihood, dtype)
    value, gradients = value_and_gradients(model, lambda: tabulated.tabulated_loss(model, table, x, z))
    exact_value, exact = value_and_gradients(model, lambda: -model.log_lik(x, z).mean())
    torch.testing.assert_close(value, exact_value, rtol=relative, atol=0)
    assert_gradients_close(gradients, exact, relative)
    assert len(gradients) == len(list(model.decoder.parameters())) + (likelihood == "negative_binomial")


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_tabulated_loss_takes_particles_outside_the_grid_exactly(likelihood):
    """A grid over [-1, 1] and particles over [-6, 6]: two thirds are outside, where p would be an extrapolation
    (or a clamp) wrong by O(1); their terms come from the network, so value and gradients are the exact loss's to
    float32 rounding. All particles outside: the same."""
    model, _, x, _ = loss_problem([10], 2, likelihood, torch.float32)
    z = torch.linspace(-6.0, 6.0, x.shape[0] * 25).reshape(x.shape[0], 25, 1)
    for lower, upper in ((-1.0, 1.0), (7.0, 8.0)):
        with model.frozen():
            table = TabulatedTarget(model, x, lower, upper, 2049)
        _, _, outside = table.locate(z.reshape(-1))
        assert len(outside) > z.numel() * 2 // 3
        value, gradients = value_and_gradients(model, lambda: tabulated.tabulated_loss(model, table, x, z))  # noqa: B023 (called in this iteration)
        exact_value, exact = value_and_gradients(model, lambda: -model.log_lik(x, z).mean())
        torch.testing.assert_close(value, exact_value, rtol=1e-5, atol=0)
        assert_gradients_close(gradients, exact, 1e-5)


def test_tabulated_loss_with_a_particle_not_finite_is_not_finite_like_the_exact_loss():
    model, table, x, z = loss_problem([10], 1, "gaussian", torch.float32)
    z[0, 0, 0] = float("nan")
    loss = tabulated.tabulated_loss(model, table, x, z)
    loss.backward()  # no exception: NaN goes the exact way, as in the exact loss
    assert torch.isnan(loss) and torch.isnan(-model.log_lik(x, z).mean())


def test_almond_update_with_the_table_off_is_the_exact_update_bit_for_bit(monkeypatch):
    """tabulate=off: the chains under targets.target_for and the loss −mean log f(x | h(z)) through the network,
    bitwise as written out here; tabulated_loss is not called."""
    monkeypatch.setattr(tabulated, "tabulated_loss", lambda *args: pytest.fail("tabulated_loss with tabulate=off"))
    model = make_model([10])
    reference = make_model([10])
    reference.load_state_dict(model.state_dict())
    x, start = torch.randn(30, 1) * 2, torch.randn(30, 10, 1)
    chains = PersistentChains(start.clone())
    phases.almond_update(
        model,
        torch.optim.SGD(model.generative_parameters, lr=0.01),
        chains,
        torch.arange(30),
        x,
        0.01,
        SamplerSettings(num_steps=10, burn_in=5, tabulate="off"),
        torch.Generator().manual_seed(3),
    )
    optimiser = torch.optim.SGD(reference.generative_parameters, lr=0.01)
    with reference.frozen():
        kept, _ = sampler.run(
            start.clone(), targets.target_for(reference, x), 0.01, 10, 5, torch.Generator().manual_seed(3)
        )
    particles = kept.permute(1, 0, 2, 3).reshape(30, -1, 1)
    optimiser.zero_grad()
    (-reference.log_lik(x, particles).mean()).backward()
    optimiser.step()
    for got, want in zip(model.parameters(), reference.parameters()):
        assert torch.equal(got, want)


OPTIMISERS = {
    "sgd": lambda parameters: torch.optim.SGD(parameters, lr=0.01),
    "adam": lambda parameters: torch.optim.Adam(parameters, lr=1e-3),
}


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("optimiser_name,relative", [("sgd", 1e-5), ("adam", 5e-5)])
def test_almond_updates_with_the_table_on_and_off_agree(likelihood, optimiser_name, relative, monkeypatch):
    """Five updates with the table on and off from the same state, with the trainer's two optimisers: the loss goes
    through tabulated_loss when on, and the parameters' displacements agree to ``relative`` of the largest one per
    tensor. Per update the gradients differ by float32 rounding (≤ 3e-6 of their scale, the loss tests) and the
    chains by ~1e-6 (test_same_chains_as_the_exact_target); SGD's displacement is linear in the gradients, so that
    stays ~1e-6 (observed ≤ 2.1e-6; 1e-5 leaves 5x); Adam's m/√v amplifies relative differences in entries whose
    gradient is small for its history (observed ≤ 6e-6; 5e-5). These catch a wrong scale, sign or wiring; a
    subtler term error (the slope part b_j dropped: an O(Δ²) error, 2e-5 to 7e-5 here) is the loss tests' to find."""
    calls = []
    original = tabulated.tabulated_loss
    monkeypatch.setattr(tabulated, "tabulated_loss", lambda *args: calls.append(1) or original(*args))
    model, _, x, _ = loss_problem([6, 5], 2, likelihood, torch.float32, batch=30)
    start = torch.randn(30, 10, 1, generator=torch.Generator().manual_seed(5))
    initial = [p.detach().clone() for p in model.generative_parameters]
    results = {}
    for mode in ("off", "on"):
        trained = make_model([6, 5], 2, likelihood=LIKELIHOODS[likelihood]())
        trained.load_state_dict(model.state_dict())
        chains = PersistentChains(start.clone())
        optimiser = OPTIMISERS[optimiser_name](trained.generative_parameters)
        generator = torch.Generator().manual_seed(3)
        settings = SamplerSettings(num_steps=10, burn_in=5, tabulate=mode)
        losses = [
            phases.almond_update(trained, optimiser, chains, torch.arange(30), x, 0.01, settings, generator)[0]
            for _ in range(5)
        ]
        results[mode] = (
            torch.stack(losses),
            [p.detach() - before for p, before in zip(trained.generative_parameters, initial)],
        )
        assert len(calls) == 5 * (mode == "on")
    torch.testing.assert_close(results["on"][0], results["off"][0], rtol=1e-5, atol=0)
    assert_gradients_close(results["on"][1], results["off"][1], relative)


@pytest.mark.parametrize("hidden", [[10], [50, 100, 50]])
def test_one_thread_reads_the_coefficient_major_table_with_bitwise_the_same_numbers(hidden, monkeypatch):
    # One thread reads a one-output table from its coefficient-major copy (COLUMN_MAX_THREADS): the numbers must be
    # those of the cell-major table bit for bit, so a run's results do not depend on which layout served them.
    model = make_model(hidden)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(40, 1, generator=generator)
    z = torch.randn(40, 30, 1, generator=generator) * 2.0
    table = TabulatedTarget.around(model, x, z, 0.01, 10, 2049)
    read = []
    monkeypatch.setattr(table, "columns", _Spy(table.columns, read))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    by_columns = table.value_and_grad(z)
    cell, t, _ = table.locate(z.reshape(-1))
    value_by_columns = table.value(cell.long(), t)
    assert read, "one thread should read the coefficient-major table"
    count = len(read)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    by_cells = table.value_and_grad(z)
    value_by_cells = table.value(cell.long(), t)
    assert len(read) == count, "two threads should read the cell-major table"
    assert all(torch.equal(a, b) for a, b in zip(by_columns, by_cells))
    assert torch.equal(value_by_columns, value_by_cells)


class _Spy:
    """A tensor stand-in that records each slice taken from it (the coefficient-major table being read)."""

    def __init__(self, tensor, read):
        self.tensor, self.read = tensor, read

    def __getitem__(self, key):
        self.read.append(key)
        return self.tensor[key]
