"""MALA (sampler.method=mala) on a conjugate Gaussian target, and the fast path under MALA."""

import pytest
import torch
from conftest import read_metrics, run_almond

from almond_cli.langevin import sampler, targets
from almond_cli.model.likelihoods import Gaussian
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import MLPDecoder, MLPEncoder

MEAN, VARIANCE = 1.5, 1.0


def log_gaussian(z):
    """log N(z; MEAN, VARIANCE) up to a constant, per chain: (B, C, 1) -> (B, C)."""
    return -0.5 * ((z - MEAN) ** 2).sum(-1) / VARIANCE


gaussian_target = targets.AutogradTarget(log_gaussian)


def final_positions(method, step_size, chains=4000, steps=20):
    generator = torch.Generator().manual_seed(5)
    # Start in the target law: MALA then keeps every chain's marginal exactly N(MEAN, VARIANCE).
    start = MEAN + VARIANCE**0.5 * torch.randn(1, chains, 1, generator=generator)
    kept, info = sampler.run(start, gaussian_target, step_size, steps, steps - 1, generator, method=method)
    return kept[-1].flatten(), info


def test_mala_removes_the_step_size_bias_of_ula():
    # With s = 0.4 ULA's stationary variance is v / (1 − s / (2v)) = 1.25 for v = 1; MALA's is exactly v.
    # 4000 chains: the sample variance has standard error v·sqrt(2/4000) ≈ 0.022, the mean 0.016; the
    # tolerances (0.1 and 0.08) are ≥ 4.5 standard errors, and ULA's bias (0.25) is far outside them.
    mala, info = final_positions("mala", 0.4)
    ula, ula_info = final_positions("ula", 0.4)
    assert abs(float(mala.var()) - VARIANCE) < 0.1
    assert abs(float(mala.mean()) - MEAN) < 0.08
    assert float(ula.var()) > VARIANCE + 0.15
    # Acceptance of MALA on a unit Gaussian at s = 0.4 is high but below one (about 0.9).
    assert 0.6 < float(info.acceptance_rate) < 0.999
    assert ula_info.acceptance_rate is None


def test_mala_rejects_everything_when_proposals_are_impossible():
    """A target that is −inf everywhere but the start rejects all proposals: chains stay put."""
    start = torch.zeros(2, 5, 1)

    def only_origin(z):
        return torch.where(
            z.abs().sum(-1) == 0, torch.zeros(z.shape[:-1]), torch.full(z.shape[:-1], -torch.inf)
        ) - 0 * z.sum(-1)

    kept, info = sampler.run(
        start, targets.AutogradTarget(only_origin), 0.1, 4, 0, torch.Generator().manual_seed(0), method="mala"
    )
    assert torch.equal(kept, torch.zeros(4, 2, 5, 1))
    assert float(info.acceptance_rate) == 0.0


def test_mala_fast_path_gives_the_same_chains_as_autograd():
    torch.manual_seed(0)
    model = LatentVariableModel(MLPEncoder(1, 1, [5]), MLPDecoder(1, 1, [10]), Gaussian(1.0))
    x = torch.randn(30, 1) + 2
    start = torch.randn(30, 6, 1)
    outcomes = []
    for target in (targets.AutogradTarget(lambda q: model.log_joint(x, q)), targets.target_for(model, x)):
        with model.frozen():
            outcomes.append(sampler.run(start, target, 0.3, 10, 0, torch.Generator().manual_seed(2), method="mala"))
    # Same accept decisions (a flip would move a chain by ~sqrt(2s) ≈ 0.8) and positions to float rounding.
    torch.testing.assert_close(outcomes[1][0], outcomes[0][0], rtol=0, atol=1e-4)
    assert float(outcomes[1][1].acceptance_rate) == float(outcomes[0][1].acceptance_rate)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="mala"):
        sampler.run(torch.zeros(1, 1, 1), gaussian_target, 0.1, 2, 0, method="hmc")


def test_train_with_mala_reports_the_acceptance_rate(tmp_path):
    """The acceptance rate is MALA's own: near 1 (but not exactly 1 everywhere, as a step that accepted every
    proposal would give) for a small step on the nearly Gaussian posteriors of normal means, and clearly lower for
    a large one. Measured on seed 1: 0.992–1.000 per epoch at 0.05, 0.39–0.86 at 2.0."""
    rates = {}
    for step_size in (0.05, 2.0):
        run_dir = tmp_path / f"run_{step_size}"
        process = run_almond(
            [
                "train",
                "debug=tiny",
                "threads=1",
                "sampler.method=mala",
                f"sampler.step_size={step_size}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
        )
        assert process.returncode == 0, process.stderr
        rates[step_size] = [r["acceptance_rate"] for r in read_metrics(run_dir) if r["phase"] == "almond"]
    small, large = rates[0.05], rates[2.0]
    assert len(small) == 20 and all(0.95 < rate <= 1.0 for rate in small) and min(small) < 1.0
    assert sum(large) / len(large) < 0.9 and max(large) < min(small)


def test_train_refuses_an_unknown_sampler_method(tmp_path):
    process = run_almond(
        ["train", "debug=tiny", "sampler.method=hmc", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert process.returncode == 2
    assert "sampler.method" in process.stderr and "mala" in process.stderr


def test_blockwise_mala_accepts_each_independent_block_alone_and_keeps_each_law():
    """200 independent blocks, N(MEAN, v_k) with v_k from 0.01 to 4, moved with one step of 0.4: one test for all
    200 at once rejects nearly every move (the narrow blocks overshoot and sink the whole chain), while a test per
    block accepts most blocks' moves. Started in the law, every block stays in it: over the blocks with v_k >= 0.5
    (about 60 x 2,000 standardised positions) the pooled mean is 0 and the variance 1 within 0.03, where the SE is
    0.003 and 0.004 (correlations across blocks: none, every block moves alone)."""
    count = 200
    variances = torch.logspace(-2, 0.602, count)

    def per_block(z):
        return -0.5 * (z - MEAN) ** 2 / variances  # (B, C, d = K): one coordinate per block

    blockwise = targets.BlockTarget(per_block, torch.arange(count))
    joint = targets.AutogradTarget(lambda z: per_block(z).sum(-1))
    generator = torch.Generator().manual_seed(3)
    start = MEAN + variances.sqrt() * torch.randn(1, 2000, count, generator=generator)
    kept, info = sampler.run(start, blockwise, 0.4, 20, 19, generator, method="mala")
    _, joint_info = sampler.run(start, joint, 0.4, 20, 19, generator, method="mala")
    assert float(joint_info.acceptance_rate) < 0.01 and float(info.acceptance_rate) > 0.4
    wide = variances >= 0.5
    standardised = ((kept[-1, 0] - MEAN) / variances.sqrt())[:, wide]
    assert abs(float(standardised.mean())) < 0.03 and abs(float(standardised.var()) - 1) < 0.03
    assert float((kept[-1, 0] - start[0])[:, wide].abs().mean()) > 0.3  # and they did move


def test_a_whitening_that_mixes_blocks_makes_the_target_one_block():
    """Under a whitening matrix with entries across two blocks the blocks are no longer independent in w: the target
    seen from w is one block again (one value per chain, MALA's joint test), and the sampler runs."""
    from almond_cli.langevin.whitening import WhitenedTarget, Whitening

    blockwise = targets.BlockTarget(lambda z: -0.5 * z**2, torch.arange(2))
    mixing = WhitenedTarget(blockwise, Whitening(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.5, 1.0]])))
    diagonal = WhitenedTarget(blockwise, Whitening(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 2.0]])))
    assert mixing.block_of_coordinate is None and diagonal.num_blocks == 2
    value, _ = mixing.value_and_grad(torch.zeros(1, 3, 2))
    assert value.shape == (1, 3)
    _, info = sampler.run(torch.zeros(1, 3, 2), mixing, 0.1, 3, 0, torch.Generator().manual_seed(0), "mala")
    assert 0 <= float(info.acceptance_rate) <= 1
