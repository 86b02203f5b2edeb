"""The Langevin sampler on a conjugate Gaussian target whose posterior is known in closed form."""

import math

import pytest
import torch

from almond_cli.langevin import sampler
from almond_cli.langevin.targets import AutogradTarget, Target

# Target: z ~ N(0, 1), x | z ~ N(z, noise_var): posterior N(x / (1 + noise_var), noise_var / (1 + noise_var)).
NOISE_VAR = 0.5
POST_VAR = NOISE_VAR / (1 + NOISE_VAR)


def log_joint_fn(x):
    def fn(z):  # z (B, C, 1) -> (B, C)
        return (-0.5 * (x.view(-1, 1, 1) - z).square() / NOISE_VAR - 0.5 * z.square()).sum(-1)

    return AutogradTarget(fn)


def ula_stationary_variance(variance: float, step_size: float) -> float:
    """ULA on N(m, v) is the AR(1) chain z' = (1 - s/v) z + sqrt(2s) eps: variance v / (1 - s / (2v))."""
    return variance / (1.0 - step_size / (2.0 * variance))


def test_ula_reaches_the_closed_form_posterior_of_a_conjugate_gaussian():
    generator = torch.Generator().manual_seed(0)
    x = torch.linspace(-3, 3, 50)
    num_chains, step_size = 400, 0.05
    z = torch.zeros(50, num_chains, 1)
    kept, _ = sampler.run(z, log_joint_fn(x), step_size, num_steps=400, burn_in=399, generator=generator)
    final = kept[-1, ..., 0]  # (B, C): after 400 steps of contraction (1 - s/v)^400 ~ 1e-26, start forgotten
    post_mean = x / (1 + NOISE_VAR)
    post_var = ula_stationary_variance(POST_VAR, step_size)
    # Mean over C = 400 independent chains has SE sqrt(v / C) = 0.029; 5 SE bounds a max over 50 points
    # (two-sided per-point tail 6e-7, times 50 points).
    se_mean = math.sqrt(post_var / num_chains)
    assert (final.mean(1) - post_mean).abs().max() < 5 * se_mean
    # Pooled variance over 50 x 400 draws: SE of a Gaussian sample variance is v sqrt(2 / N) = 0.0036.
    pooled = (final - final.mean(1, keepdim=True)).square().sum() / (final.numel() - 50)
    assert abs(float(pooled) - post_var) < 5 * post_var * math.sqrt(2 / final.numel())
    # The discretisation bias is visible: the exact posterior variance is off by far more than 5 SE.
    assert abs(float(pooled) - POST_VAR) > 5 * post_var * math.sqrt(2 / final.numel())


def test_run_keeps_the_states_after_burn_in_and_is_reproducible():
    x = torch.randn(7)
    z = torch.randn(7, 3, 1)
    first, info = sampler.run(z, log_joint_fn(x), 0.01, 5, 2, torch.Generator().manual_seed(3))
    second, _ = sampler.run(z, log_joint_fn(x), 0.01, 5, 2, torch.Generator().manual_seed(3))
    assert first.shape == (3, 7, 3, 1)
    assert torch.equal(first, second)
    assert float(info.nonfinite_fraction) == 0.0 and math.isfinite(float(info.mean_log_joint))


@pytest.mark.parametrize("method", ["ula", "mala"])
def test_run_is_repeated_steps_bit_for_bit(method):
    """run is step (ULA) or mala_step (MALA) K times from the same generator state: the same positions, bit for
    bit, and the diagnostics of the last evaluated state (for ULA the state before the last, unevaluated move)."""
    x = torch.randn(4)
    z = torch.randn(4, 2, 1)
    kept, info = sampler.run(z, log_joint_fn(x), 0.3, 5, 0, torch.Generator().manual_seed(5), method=method)
    generator = torch.Generator().manual_seed(5)
    state = sampler.initial_state(z, log_joint_fn(x))
    accepted = torch.zeros(())
    for index in range(5):
        if method == "ula":
            previous = state
            state, _ = sampler.step(state, log_joint_fn(x), 0.3, generator)
        else:
            state, accept = sampler.mala_step(state, log_joint_fn(x), 0.3, generator)
            accepted = accepted + accept.float().mean()
        assert torch.equal(state.z, kept[index])
    expected = sampler.diagnose(previous if method == "ula" else state)
    for name in ("mean_log_joint", "grad_norm", "nonfinite_fraction"):
        assert torch.equal(getattr(info, name), getattr(expected, name))
    if method == "mala":
        assert torch.equal(info.acceptance_rate, accepted / 5) and 0 < float(info.acceptance_rate) < 1
    else:
        assert info.acceptance_rate is None


def test_one_step_is_the_langevin_update():
    x = torch.tensor([1.0])
    z = torch.tensor([[[0.5]]])
    generator = torch.Generator().manual_seed(9)
    state = sampler.initial_state(z, log_joint_fn(x))
    noise = torch.randn((1, 1, 1), generator=torch.Generator().manual_seed(9))
    grad = (1.0 - 0.5) / NOISE_VAR - 0.5
    new_state, _ = sampler.step(state, log_joint_fn(x), 0.1, generator)
    assert torch.allclose(new_state.z, z + 0.1 * grad + math.sqrt(0.2) * noise)
    assert torch.allclose(state.grad, torch.tensor([[[grad]]]))


@pytest.mark.parametrize("burn_in,num_steps", [(3, 3), (-1, 3), (0, 0)])
def test_run_refuses_a_burn_in_that_keeps_nothing(burn_in, num_steps):
    with pytest.raises(ValueError):
        sampler.run(torch.zeros(1, 1, 1), log_joint_fn(torch.zeros(1)), 0.1, num_steps, burn_in)


def test_nonfinite_targets_are_reported():
    def broken(z):
        return torch.where(z[..., 0] > 0, torch.full_like(z[..., 0], float("nan")), -z[..., 0].square())

    z = torch.tensor([[[1.0], [-1.0]]])
    state = sampler.initial_state(z, AutogradTarget(broken))
    assert float(sampler.diagnose(state).nonfinite_fraction) == 0.5


class ClosedFormGaussian(Target):
    """log N(z; mean, I) with its gradient −(z − mean) written out; ``__call__`` refuses, so a sampler that took
    the gradient by autograd (or evaluated the target any other way) fails. Counts ``value_and_grad`` calls."""

    def __init__(self, mean: float):
        self.mean = mean
        self.calls = 0

    def __call__(self, z):
        raise AssertionError("the sampler must call value_and_grad, not the target itself")

    def value_and_grad(self, z):
        self.calls += 1
        return -0.5 * (z - self.mean).square().sum(-1), -(z - self.mean)


@pytest.mark.parametrize("method,evaluations", [("ula", 4), ("mala", 5)])
def test_the_sampler_calls_the_targets_value_and_grad_and_nothing_else(method, evaluations):
    target = ClosedFormGaussian(2.0)
    z = torch.tensor([[[0.5], [-1.0]]])
    kept, info = sampler.run(z, target, 0.1, 4, 0, torch.Generator().manual_seed(4), method=method)
    assert target.calls == evaluations  # ULA: K evaluations; MALA: K + 1
    assert kept.shape == (4, 1, 2, 1) and torch.isfinite(info.mean_log_joint)
    # One step moves by s times the target's own gradient: −(0.5 − 2) = 1.5 and −(−1 − 2) = 3.
    state = sampler.initial_state(z, target)
    assert torch.equal(state.grad, torch.tensor([[[1.5], [3.0]]]))
    noise = torch.randn((1, 2, 1), generator=torch.Generator().manual_seed(6))
    new_state, _ = sampler.step(state, target, 0.1, torch.Generator().manual_seed(6))
    assert torch.allclose(new_state.z, z + 0.1 * state.grad + math.sqrt(0.2) * noise)
    assert torch.equal(new_state.grad, -(new_state.z - 2.0))


def test_a_plain_function_is_not_a_target():
    with pytest.raises(TypeError, match="AutogradTarget"):
        sampler.run(torch.zeros(1, 1, 1), lambda z: -z.square().sum(-1), 0.1, 2, 0)


def test_autograd_target_gives_the_closed_form_gradient_of_a_gaussian():
    # log N(z; mu, Sigma) has gradient −Sigma^{-1} (z − mu); a full covariance mixes the coordinates.
    generator = torch.Generator().manual_seed(8)
    factor = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    covariance = factor @ factor.T + 0.5 * torch.eye(3, dtype=torch.float64)
    mean = torch.randn(3, generator=generator, dtype=torch.float64)
    law = torch.distributions.MultivariateNormal(mean, covariance)
    z = torch.randn(5, 4, 3, generator=generator, dtype=torch.float64)
    target = AutogradTarget(law.log_prob)
    log_joint, grad = target.value_and_grad(z)
    assert log_joint.shape == (5, 4) and grad.shape == (5, 4, 3)
    assert not log_joint.requires_grad and not grad.requires_grad and not z.requires_grad
    torch.testing.assert_close(log_joint, law.log_prob(z), rtol=1e-12, atol=1e-12)
    expected = -torch.linalg.solve(covariance, (z - mean).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(target(z), law.log_prob(z))
    # Inside no_grad (the ALMOND update's callers) the gradient is still taken.
    with torch.no_grad():
        torch.testing.assert_close(target.value_and_grad(z)[1], expected, rtol=1e-10, atol=1e-10)
    # The sampler's state carries exactly the target's value and gradient.
    state = sampler.initial_state(z, target)
    assert torch.equal(state.log_joint, log_joint) and torch.equal(state.grad, grad)
