"""A mixed model's laws read from tables during an update (``tabulated.TabulatedLaws``): each factor's u = h_f(z) of
one random term from a cubic Hermite table over its levels' chains, the network outside the grid; the per-component
target of ``build_target`` uses it unless ``sampler.tabulate=off``, and only where the laws are smooth networks of
one term."""

from __future__ import annotations

import torch

from almond_cli.langevin import tabulated
from almond_cli.langevin.settings import SamplerSettings, build_target
from almond_cli.langevin.targets import BlockTarget
from almond_cli.model.likelihoods import Poisson
from almond_cli.model.mixed import (
    MixedLayout,
    MixedLikelihood,
    MixedLinearDecoder,
    MixedMLPDecoder,
    MixedModel,
    MixedTableEncoder,
)


def _model(terms=("(Intercept)",), activation: str = "tanh", decoder_class=MixedMLPDecoder) -> MixedModel:
    """Two crossed factors (5 and 7 levels) and a bent learned law per factor; rows [y, offset, x, z..., levels]."""
    layout = MixedLayout.of([("a", terms, 5), ("b", ("(Intercept)",), 7)], 1, 1)
    torch.manual_seed(0)
    kwargs = {"hidden_sizes": [16, 16], "activation": activation} if decoder_class is MixedMLPDecoder else {}
    decoder = decoder_class(layout.plain(), init_scale=0.6, **kwargs)
    if decoder_class is MixedMLPDecoder:
        with torch.no_grad():
            for net in decoder.nets:
                net[-1].weight.normal_(0.0, 0.5)
    likelihood = MixedLikelihood(Poisson(), layout, torch.tensor([0.2]))
    model = MixedModel(MixedTableEncoder(layout.latent_dim), decoder, likelihood)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _rows(model: MixedModel, count: int = 40) -> torch.Tensor:
    """Rows of b's levels nested in a's (level j of b inside level j mod 5 of a): 5 independent components."""
    generator = torch.Generator().manual_seed(1)
    y = torch.poisson(torch.full((count,), 2.0), generator=generator)
    x = torch.randn(count, generator=generator)
    level_b = torch.randint(0, 7, (count,), generator=generator)
    z_columns = [x if term == "x" else torch.ones(count) for block in model.layout.blocks for term in block.terms]
    return torch.column_stack([y, torch.zeros(count), x, *z_columns, (level_b % 5).float(), level_b.float()])


def test_the_tables_give_each_factors_law_and_its_slope_to_float32_rounding():
    """Inside the grid: u within 1e-5 of the network (float32 tables of a smooth law; the Hermite error at 2,049
    nodes over ~25 units is ~1e-9), and the z-gradient of any function of u within 5e-4 (the cubic's slope, from
    float32 coefficients divided by the spacing); the chains of every level of a factor read their factor's table."""
    model = _model()
    decoder = model.decoder
    start = torch.randn(2, 6, decoder.layout.latent_dim, generator=torch.Generator().manual_seed(2))
    laws = tabulated.TabulatedLaws.around(decoder, start, step_size=0.05, num_steps=10, num_nodes=2049)
    z = (start * 1.3).requires_grad_(True)
    weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    tabled = laws(z)
    (tabled_grad,) = torch.autograd.grad((weights * tabled.sin()).sum(), z)
    exact = decoder(z)
    (exact_grad,) = torch.autograd.grad((weights * exact.sin()).sum(), z)
    torch.testing.assert_close(tabled, exact, rtol=0, atol=1e-5)
    torch.testing.assert_close(tabled_grad, exact_grad, rtol=0, atol=5e-4)
    assert not torch.equal(tabled, exact)  # read from the tables, not the network


def test_particles_outside_a_factors_grid_or_not_finite_read_the_network():
    model = _model()
    decoder = model.decoder
    start = torch.zeros(1, 2, decoder.layout.latent_dim)
    laws = tabulated.TabulatedLaws.around(decoder, start, step_size=0.01, num_steps=1, num_nodes=65)
    low, high = laws.tables[0].lower, laws.tables[0].upper
    z = torch.zeros(1, 2, decoder.layout.latent_dim)
    z[0, 0, 0], z[0, 1, 3], z[0, 1, 7] = high + 2.0, low - 5.0, float("nan")  # levels of a; a level of b
    z.requires_grad_(True)
    tabled, exact = laws(z), decoder(z)
    for chain, coordinate in ((0, 0), (1, 3)):  # the network's value, not an extrapolated cubic
        torch.testing.assert_close(tabled[0, chain, coordinate], exact[0, chain, coordinate], rtol=1e-6, atol=1e-7)
    assert torch.isnan(tabled[0, 1, 7])
    (grad,) = torch.autograd.grad(tabled[0, 0, 0], z)
    (exact_grad,) = torch.autograd.grad(decoder(z)[0, 0, 0], z)
    torch.testing.assert_close(grad[0, 0, 0], exact_grad[0, 0, 0], rtol=1e-6, atol=1e-7)


def test_build_target_tabulates_smooth_one_term_laws_unless_switched_off(monkeypatch):
    """The update's per-component target reads the tables for smooth one-term laws (auto and on); not with
    ``sampler.tabulate=off``, a random slope (two terms), a ReLU law or the linear (Gaussian) law."""
    built = []
    original = tabulated.TabulatedLaws.__init__

    def recording(self, *args, **kwargs):
        built.append(True)
        original(self, *args, **kwargs)

    monkeypatch.setattr(tabulated.TabulatedLaws, "__init__", recording)
    cases = [
        (_model(), "auto", True),
        (_model(), "on", True),
        (_model(), "off", False),
        (_model(terms=("(Intercept)", "x")), "auto", False),
        (_model(activation="relu"), "auto", False),
        (_model(decoder_class=MixedLinearDecoder), "auto", False),
    ]
    for model, mode, expected in cases:
        built.clear()
        x = _rows(model)
        start = torch.zeros(1, 3, model.layout.latent_dim)
        target = build_target(model, x, start, SamplerSettings(tabulate=mode), 0.05, 10)
        assert isinstance(target, BlockTarget) and target.num_blocks == 5
        assert bool(built) == expected, (mode, expected)
        values, grad = target.value_and_grad(start + 0.1)
        exact = model.log_joint_blocks(x, start + 0.1)
        # the same per-component log-joint, to the tables' float32 rounding
        torch.testing.assert_close(values, exact, rtol=1e-5, atol=1e-3 if expected else 0.0)
        assert grad.shape == start.shape


def test_laws_apply_only_to_smooth_networks_of_one_term():
    assert tabulated.laws_apply(_model())
    assert not tabulated.laws_apply(_model(terms=("(Intercept)", "x")))
    assert not tabulated.laws_apply(_model(activation="relu"))
    assert not tabulated.laws_apply(_model(decoder_class=MixedLinearDecoder))
