"""The hand-written Langevin gradient (targets.MLPTarget) against autograd (targets.AutogradTarget): same values,
same chains.

Tolerances: every quantity is float32; the fused path and autograd add the same terms in a different order,
so they differ by a few units in the last place of the largest intermediate (|h| ≲ 10 here → ~1e-6).
Chains compound this over K steps through 1 + s·∂²log p, which stays near 1 for s = 0.01, so 1e-4 after
ten steps leaves two orders of margin while a wrong derivative (an error of order 1 in ∇) moves the chains by
s · 1 = 1e-2 per step and fails.
"""

import pytest
import torch

from almond_cli.langevin import sampler, targets
from almond_cli.langevin.chains import PersistentChains
from almond_cli.langevin.settings import SamplerSettings
from almond_cli.model.likelihoods import Gaussian, PoissonGLMM
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import MLPDecoder, MLPEncoder
from almond_cli.training import phases

# (hidden sizes, activation, latent d, data D): scalar output with 1–3 hidden layers (the folded backward
# sweep), vector output, d > 1, each supported activation.
CASES = [
    ([10], "softplus", 1, 1),
    ([50, 100, 50], "softplus", 1, 1),
    ([6, 5], "softplus", 1, 1),
    ([8], "softplus", 3, 4),
    ([7, 5], "tanh", 3, 1),
    ([6, 4], "relu", 2, 3),
    ([], "softplus", 2, 1),
    ([], "softplus", 2, 3),
]


def make_model(hidden, activation, latent_dim, data_dim, seed=0):
    torch.manual_seed(seed)
    model = LatentVariableModel(
        MLPEncoder(data_dim, latent_dim, [5]), MLPDecoder(latent_dim, data_dim, hidden, activation), Gaussian(0.7)
    )
    with torch.no_grad():  # larger weights than the default init so activations leave their linear range
        for parameter in model.decoder.parameters():
            parameter.mul_(2.0)
    return model


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "output-affine"])
@pytest.mark.parametrize("hidden,activation,latent_dim,data_dim", CASES)
def test_value_and_gradient_match_autograd(hidden, activation, latent_dim, data_dim, affine):
    model = make_model(hidden, activation, latent_dim, data_dim)
    if affine:  # a restarted decoder's output in the data's units (training/collapse.py): folded into the last layer
        model.decoder.output_shift.copy_(torch.linspace(-1.0, 2.0, data_dim))
        model.decoder.output_scale.copy_(torch.linspace(0.3, 1.7, data_dim))
    x = torch.randn(13, data_dim) * 2
    z = torch.randn(13, 9, latent_dim) * 2
    target = targets.target_for(model, x)
    assert isinstance(target, targets.MLPTarget)
    reference = sampler.initial_state(z, targets.AutogradTarget(lambda q: model.log_joint(x, q)))
    fused = sampler.initial_state(z, target)
    torch.testing.assert_close(fused.log_joint, reference.log_joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.grad, reference.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target(z), model.log_joint(x, z))


@pytest.fixture
def one_thread():
    """Blocked sweeps run with one CPU thread only (``targets.BLOCK_MAX_THREADS``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("hidden,activation,latent_dim,data_dim", CASES)
def test_sweeping_in_blocks_of_rows_gives_the_whole_batch_result(
    hidden, activation, latent_dim, data_dim, monkeypatch, one_thread
):
    model = make_model(hidden, activation, latent_dim, data_dim)
    x = torch.randn(13, data_dim) * 2
    z = torch.randn(13, 9, latent_dim) * 2
    whole = sampler.initial_state(z, targets.target_for(model, x))
    target = targets.target_for(model, x)
    widest = max(weight.shape[0] for weight in target.weights)
    monkeypatch.setattr(targets, "BLOCK_BYTES", 4 * 9 * widest * 4)  # blocks of 4 rows: 4, 4, 4 and 1
    assert target.rows_per_block(z) == 4
    blocked = sampler.initial_state(z, target)
    # Per row the same products and elementwise ops; a matmul kernel chosen for the smaller blocks may sum in another
    # order, so allow float32 rounding of sums over up to 100 terms (the tolerance of the autograd comparison above).
    torch.testing.assert_close(blocked.log_joint, whole.log_joint, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocked.grad, whole.grad, rtol=1e-5, atol=1e-5)


def test_glmm_rows_keep_their_own_covariates_when_swept_in_blocks(monkeypatch, one_thread):
    model, x = make_glmm_model()
    z = torch.randn(15, 9, 2) * 2
    whole = sampler.initial_state(z, targets.target_for(model, x))
    monkeypatch.setattr(targets, "BLOCK_BYTES", 1)  # one row per block
    target = targets.target_for(model, x)
    assert target.rows_per_block(z) == 1
    blocked = sampler.initial_state(z, target)
    torch.testing.assert_close(blocked.log_joint, whole.log_joint, rtol=1e-5, atol=1e-4)  # as the autograd check
    torch.testing.assert_close(blocked.grad, whole.grad, rtol=1e-5, atol=1e-4)


def test_block_size_follows_the_widest_layer_and_only_one_fp32_cpu_thread_blocks(one_thread):
    model = make_model([50, 100, 50], "softplus", 1, 1)
    target = targets.target_for(model, torch.randn(1000, 1))
    z = torch.zeros(1000, 100, 1)
    # The mixture's paper shape: B 1000, C 100; a row's widest activation is 100 chains x 100 units x 4 bytes.
    assert target.rows_per_block(z) == targets.BLOCK_BYTES // (100 * 100 * 4) == 52
    assert target.rows_per_block(torch.zeros(1000, 100, 1, device="meta")) == 1000
    bf16 = targets.MLPTarget(model, targets.mlp_layers(model.decoder), torch.randn(1000, 1), precision="bf16")
    assert bf16.rows_per_block(z) == 1000
    torch.set_num_threads(2)
    assert target.rows_per_block(z) == 1000


def test_softplus_far_outside_its_linear_range():
    """softplus' threshold (h > 20 returns h) and deep negative inputs give the same derivative as autograd."""
    model = make_model([10], "softplus", 1, 1)
    with torch.no_grad():
        model.decoder.net[0].weight.fill_(30.0)
    x = torch.randn(4, 1)
    z = torch.linspace(-3, 3, 4 * 50).reshape(4, 50, 1)
    reference = sampler.initial_state(z, targets.AutogradTarget(lambda q: model.log_joint(x, q)))
    fused = sampler.initial_state(z, targets.target_for(model, x))
    torch.testing.assert_close(fused.grad, reference.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hidden,activation,latent_dim,data_dim", CASES[:5])
def test_same_chains_for_the_same_generator_state(hidden, activation, latent_dim, data_dim):
    model = make_model(hidden, activation, latent_dim, data_dim)
    x = torch.randn(20, data_dim)
    start = torch.randn(20, 8, latent_dim)
    results = []
    for target in (targets.AutogradTarget(lambda q: model.log_joint(x, q)), targets.target_for(model, x)):
        generator = torch.Generator().manual_seed(7)
        with model.frozen():
            kept, info = sampler.run(start, target, 0.01, 10, 5, generator)
        results.append((kept, info))
    (kept_ref, info_ref), (kept_fast, info_fast) = results
    torch.testing.assert_close(kept_fast, kept_ref, rtol=0, atol=1e-4)
    for name in info_ref._fields:
        torch.testing.assert_close(getattr(info_fast, name), getattr(info_ref, name), rtol=1e-4, atol=1e-4)


def autograd_update(model, optimiser, chains, indices, x, step_size, num_steps, burn_in, generator):
    """The ALMOND update written out with the autograd target: the reference for ``phases.almond_update``."""
    start = chains.gather(indices)
    with model.frozen():
        target = targets.AutogradTarget(lambda z: model.log_joint(x, z))
        kept, _ = sampler.run(start, target, step_size, num_steps, burn_in, generator)
    chains.scatter(indices, kept[-1])
    particles = kept.permute(1, 0, 2, 3).reshape(x.shape[0], -1, kept.shape[-1])
    optimiser.zero_grad(set_to_none=True)
    (-model.log_lik(x, particles).mean()).backward()
    optimiser.step()


def test_almond_update_fast_and_reference_give_the_same_parameters():
    """Ten ALMOND updates with the fused target (``phases.almond_update``) and with autograd (written out) from the
    same state end at the same parameters and chains."""
    outcomes = []
    for fast in (False, True):
        model = make_model([10], "softplus", 1, 1)
        x = torch.randn(30, 1) + 2
        chains = PersistentChains(torch.randn(30, 6, 1))
        optimiser = torch.optim.Adam(model.generative_parameters, lr=0.01)
        generator = torch.Generator().manual_seed(3)
        for _ in range(10):
            indices = torch.randperm(30, generator=torch.Generator().manual_seed(1))[:20]
            if fast:
                phases.almond_update(
                    model,
                    optimiser,
                    chains,
                    indices,
                    x[indices],
                    0.01,
                    SamplerSettings(num_steps=10, burn_in=9),
                    generator,
                )
            else:
                autograd_update(model, optimiser, chains, indices, x[indices], 0.01, 10, 9, generator)
        outcomes.append((torch.cat([p.detach().flatten() for p in model.generative_parameters]), chains.positions))
    torch.testing.assert_close(outcomes[1][0], outcomes[0][0], rtol=0, atol=1e-4)
    torch.testing.assert_close(outcomes[1][1], outcomes[0][1], rtol=0, atol=1e-4)


def test_fast_path_is_bitwise_deterministic():
    runs = []
    for _ in range(2):
        model = make_model([50, 100, 50], "softplus", 1, 1)
        x = torch.randn(10, 1)
        generator = torch.Generator().manual_seed(11)
        kept, _ = sampler.run(torch.zeros(10, 4, 1), targets.target_for(model, x), 0.01, 5, 0, generator)
        runs.append(kept)
    assert torch.equal(runs[0], runs[1])


def test_unknown_networks_fall_back_to_autograd():
    model = make_model([4], "gelu", 1, 1)
    x = torch.randn(3, 1)
    target = targets.target_for(model, x)
    assert isinstance(target, targets.AutogradTarget)
    z = torch.randn(3, 2, 1)
    torch.testing.assert_close(target(z), model.log_joint(x, z))


def test_a_run_is_bitwise_repeatable_on_the_fast_path(tmp_path):
    """Two `almond train` runs with one seed end at bitwise-equal parameters and chains (resume relies on it)."""
    from conftest import run_almond

    states = []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        process = run_almond(["train", "debug=tiny", "threads=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert process.returncode == 0, process.stderr
        states.append(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True))
    first, second = states
    assert first["model"].keys() == second["model"].keys()
    assert all(torch.equal(first["model"][key], second["model"][key]) for key in first["model"])
    assert torch.equal(first["chains"]["positions"], second["chains"]["positions"])


def make_glmm_model(seed=0):
    """The GLMM's shapes (d = q = 2 here, [6, 5] decoder, 3 fixed effects) with a Poisson log-link likelihood."""
    torch.manual_seed(seed)
    likelihood = PoissonGLMM(num_fixed=3, max_linear_predictor=1.5)  # a low cap, so draws cross it
    with torch.no_grad():
        likelihood.beta.copy_(torch.tensor([0.3, -0.2, 0.5]))
    model = LatentVariableModel(MLPEncoder(1 + 3 + 2, 2, [5]), MLPDecoder(2, 2, [6, 5]), likelihood)
    rows = torch.cat([torch.poisson(torch.full((15, 1), 4.0)), torch.randn(15, 3), torch.randn(15, 2)], dim=1)
    return model, rows


def test_poisson_glmm_fast_gradient_matches_autograd_on_both_sides_of_the_cap():
    model, x = make_glmm_model()
    z = torch.randn(15, 9, 2) * 2
    target = targets.target_for(model, x)
    assert isinstance(target, targets.MLPTarget)
    reference = sampler.initial_state(z, targets.AutogradTarget(lambda q: model.log_joint(x, q)))
    fused = sampler.initial_state(z, target)
    eta = model.likelihood.linear_predictor(x, model.decoder(z))
    assert (eta > 1.5).any() and (eta < 1.5).any()  # the check covers exp and its quadratic continuation
    torch.testing.assert_close(fused.log_joint, reference.log_joint, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fused.grad, reference.grad, rtol=1e-5, atol=1e-4)


def test_poisson_glmm_same_chains_for_the_same_generator_state():
    model, x = make_glmm_model(seed=1)
    start = torch.randn(15, 6, 2)
    kept = []
    for target in (targets.AutogradTarget(lambda q: model.log_joint(x, q)), targets.target_for(model, x)):
        with model.frozen():
            kept.append(sampler.run(start, target, 0.01, 10, 5, torch.Generator().manual_seed(5))[0])
    torch.testing.assert_close(kept[1], kept[0], rtol=0, atol=1e-4)
