"""Split-R-hat on cases with known answers, and the check on a conjugate Gaussian target."""

import math

import pytest
import torch

from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.diagnostics import chain_rhat, split_rhat


def test_split_rhat_matches_the_formula_by_hand():
    # Two chains of 4 draws split into halves [0,2],[4,6] and [1,1],[3,5]: n = 2, half means 1, 5, 1, 4,
    # between = n · var(1, 5, 1, 4) = 2 · 4.25 = 8.5; within = mean(2, 2, 0, 2) = 1.5;
    # var+ = (1/2) · 1.5 + 8.5 / 2 = 5.0; R-hat = sqrt(5 / 1.5).
    draws = torch.tensor([[0.0, 2.0, 4.0, 6.0], [1.0, 1.0, 3.0, 5.0]])
    assert float(split_rhat(draws)) == pytest.approx(math.sqrt(5.0 / 1.5), rel=1e-12)


def test_split_rhat_drops_the_middle_draw_of_odd_chains():
    draws = torch.tensor([[0.0, 2.0, 100.0, 4.0, 6.0], [1.0, 1.0, -100.0, 3.0, 5.0]])
    assert float(split_rhat(draws)) == pytest.approx(math.sqrt(5.0 / 1.5), rel=1e-12)


def test_split_rhat_is_near_one_for_independent_chains():
    # iid N(0, 1): R-hat - 1 is O(1/N) in expectation; with 8 chains x 2000 draws it is well within 0.01.
    generator = torch.Generator().manual_seed(0)
    rhat = split_rhat(torch.randn(50, 8, 2000, generator=generator, dtype=torch.float64))
    assert rhat.shape == (50,)
    assert float((rhat - 1).abs().max()) < 0.01


def test_split_rhat_flags_chains_that_disagree_and_a_trend():
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(4, 1000, generator=generator, dtype=torch.float64)
    offset = noise + torch.tensor([0.0, 0.0, 0.0, 3.0]).unsqueeze(1)  # one chain in another mode
    assert float(split_rhat(offset)) > 1.5
    # every chain still drifting by 4 sd: only the split catches it (the halves differ); ~1.35 here
    trend = noise + torch.linspace(0, 4, 1000, dtype=torch.float64)
    assert float(split_rhat(trend)) > 1.2


def test_split_rhat_degenerate_cases():
    assert float(split_rhat(torch.ones(3, 6))) == 1.0
    assert math.isinf(float(split_rhat(torch.tensor([[1.0] * 6, [2.0] * 6]))))
    with pytest.raises(ValueError, match=">= 4 draws"):
        split_rhat(torch.zeros(2, 3))


class _Gaussian(torch.nn.Module):
    """Stand-in model with log p(x, z) = log N(z; x, 1): the chains' target is known exactly."""

    def log_joint(self, x, z):
        return -0.5 * (z - x.unsqueeze(1)).square().sum(-1)

    def frozen(self):
        import contextlib

        return contextlib.nullcontext()


def test_chain_rhat_tells_mixed_chains_from_stuck_ones():
    generator = torch.Generator().manual_seed(2)
    x = torch.zeros(8, 1)
    mixed = PersistentChains(torch.randn(8, 16, 1, generator=generator))   # draws from the target already
    report = chain_rhat(_Gaussian(), mixed, x, num_points=8, step_size=0.5, burn_in=5, num_draws=40,
                        generator=generator)
    # ULA with step s on N(0, 1) is AR(1) with coefficient 1 - s = 0.5, so 40 draws are ~13 independent
    # ones per chain; the median over 8 points of R-hat then lay in [1.009, 1.021] for seeds 0..9.
    assert 0.99 < report["rhat_median"] < 1.05
    dispersed = PersistentChains(torch.linspace(-30, 30, 16).repeat(8, 1).unsqueeze(-1))
    stuck = chain_rhat(_Gaussian(), dispersed, x, num_points=8, step_size=0.001, burn_in=1, num_draws=20,
                       generator=generator)
    # step 0.001 moves a chain ~0.1 in 20 steps: starts 4 apart stay apart, R-hat is huge.
    assert stuck["rhat_median"] > 3.0


def test_chain_rhat_leaves_batch_norm_statistics_and_the_training_mode_alone():
    """The check runs the decoder in eval mode, as the ALMOND update does: a model with batch norm, left in train
    mode between updates, keeps its running statistics (they define the training target and the scored model)
    and its mode, and the check's R-hat is that of the eval-mode target."""
    from almond_cli.model.conv_networks import ConvDecoder, ConvEncoder
    from almond_cli.model.likelihoods import Bernoulli
    from almond_cli.model.model import LatentVariableModel

    torch.manual_seed(0)
    model = LatentVariableModel(ConvEncoder(784, 2, channels=[4, 4, 4], dense_units=16),
                                ConvDecoder(2, 784, channels=[4, 4, 4], dense_units=16), Bernoulli())
    x = (torch.rand(6, 784) > 0.5).float()
    with torch.no_grad():  # running statistics away from their initial 0 / 1, as after a warm start
        model.decoder(torch.randn(32, 2) * 3 + 1)
    chains = PersistentChains(torch.randn(6, 4, 2))
    model.train()
    before = {name: tensor.clone() for name, tensor in model.decoder.state_dict().items()}
    result = chain_rhat(model, chains, x, 6, 0.01, 2, 6, torch.Generator().manual_seed(1))
    assert model.training
    after = model.decoder.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    model.eval()
    assert chain_rhat(model, chains, x, 6, 0.01, 2, 6, torch.Generator().manual_seed(1)) == result
