"""``sampler.precision``: the bfloat16 sweep of ``targets.MLPTarget`` against the float32 one, how ``auto`` decides,
and what a run records in summary.json."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_config

from almond_cli.langevin import precision, targets
from almond_cli.model.likelihoods import Gaussian, Poisson
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import MLPDecoder, MLPEncoder
from almond_cli.training.trainer import train

UNIT_ROUNDOFF = 2.0**-8  # bfloat16: 8 significant bits, round to nearest


def bf16_tolerance(num_linear: int) -> float:
    """Normwise relative error allowed between the bfloat16 and float32 sweeps of an MLP with ``num_linear`` layers.

    Each bfloat16 rounding has a relative error of at most u = 2^-8 ≈ 0.0039, and over many values an rms of
    u/√3 (uniform in ±u). On its way from z to ∂log p/∂z a value passes n = 7L − 2 roundings for L linear
    layers: z once; each layer's weights and bias (2L); each forward product's result (L); each hidden activation and its
    derivative (2(L − 1)); each backward product's result (L) and its product with the derivative (L − 1). The
    widths enter through the products: a k-term dot product of rounded operands sums k independent errors, so
    its relative error stays of order u whatever k (fp32 accumulation adds nothing at this scale). Independent
    errors add in quadrature: u·√(n/3), i.e. 0.012 for [50, 100, 50] (L = 4) and 0.010 for [128, 256] (L = 3);
    the factor 3 covers the layers' amplification of earlier errors (activation derivatives ≤ 1 here) and the
    errors shared by all particles (the weights are rounded once). Measured: 0.005–0.006 on these seeds. A
    wrong derivative or weight in the sweep is an error of order 1.
    """
    roundings = 7 * num_linear - 2
    return 3.0 * UNIT_ROUNDOFF * math.sqrt(roundings / 3.0)


def relative_error(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approximate - exact).norm() / exact.norm())


# (hidden sizes, latent d, data D): the mixture preset's decoder (scalar output: the folded backward sweep), the
# GLMM's widths and d = 5 (vector output), the exponential preset's [10]. Softplus only: tanh's derivative
# 1 − tanh² cancels where tanh saturates and ReLU's jumps at 0, so neither error stays within u·√n.
CASES = [([50, 100, 50], 1, 1), ([128, 256], 5, 5), ([10], 1, 1)]


@pytest.mark.parametrize("hidden,latent_dim,data_dim", CASES)
def test_bf16_sweep_agrees_with_fp32_within_bfloat16_rounding(hidden, latent_dim, data_dim):
    torch.manual_seed(0)
    model = LatentVariableModel(
        MLPEncoder(data_dim, latent_dim, [5]), MLPDecoder(latent_dim, data_dim, hidden, "softplus"), Gaussian(0.7)
    )
    with torch.no_grad():  # larger weights than the default init so activations leave their linear range
        for parameter in model.decoder.parameters():
            parameter.mul_(2.0)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, data_dim, generator=generator) * 2
    z = torch.randn(64, 32, latent_dim, generator=generator) * 2
    fast32 = targets.target_for(model, x, precision="fp32")
    fast16 = targets.target_for(model, x, precision="bf16")
    assert (fast32.precision, fast16.precision) == ("fp32", "bf16")
    assert fast16.weights[0].dtype == torch.bfloat16
    value32, grad32 = fast32.value_and_grad(z)
    value16, grad16 = fast16.value_and_grad(z)
    assert value16.dtype == grad16.dtype == torch.float32
    # The decoder's part only: the prior's log N(z; 0, I) and −z are float32 on both sides.
    prior = -0.5 * (z.square().sum(-1) + latent_dim * targets.LOG_2PI)
    tolerance = bf16_tolerance(len(hidden) + 1)
    assert 0 < relative_error(grad16 + z, grad32 + z) < tolerance
    assert 0 < relative_error(value16 - prior, value32 - prior) < tolerance


def test_fp32_is_the_default_and_bitwise_the_plain_target():
    torch.manual_seed(0)
    model = LatentVariableModel(MLPEncoder(1, 1, [5]), MLPDecoder(1, 1, [6, 5]), Gaussian(1.0))
    x, z = torch.randn(8, 1), torch.randn(8, 4, 1)
    plain, fp32 = targets.target_for(model, x), targets.target_for(model, x, precision="fp32")
    for first, second in zip(plain.value_and_grad(z), fp32.value_and_grad(z)):
        assert torch.equal(first, second)
    assert plain.precision == "fp32"


def test_autograd_target_runs_fp32_whatever_is_asked():
    torch.manual_seed(0)
    # A likelihood without value_and_grad_u (Poisson) has no fused path: autograd, in float32.
    model = LatentVariableModel(MLPEncoder(1, 1, [5]), MLPDecoder(1, 1, [6]), Poisson())
    target = targets.target_for(model, torch.randn(4, 1), precision="bf16")
    assert isinstance(target, targets.AutogradTarget) and target.precision == "fp32"
    assert targets.target_precision(model, "cpu", "bf16") == "fp32"
    fused = LatentVariableModel(MLPEncoder(1, 1, [5]), MLPDecoder(1, 1, [6]), Gaussian(1.0))
    assert targets.target_precision(fused, "cpu", "bf16") == "bf16"


@pytest.mark.parametrize(
    "flags,expected",
    [
        ({"sse2", "avx2", "avx512f"}, "fp32"),  # AVX-512 without its BF16 extension
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # AMD Zen 4, Intel Cooper Lake
        ({"avx2", "amx_tile", "amx_bf16"}, "bf16"),  # Intel Sapphire Rapids
        ({"avx2", "amx_tile", "amx_int8"}, "fp32"),  # AMX tiles without bf16 products
        (None, "fp32"),  # /proc/cpuinfo unreadable
    ],
)
def test_auto_on_cpu_follows_the_flags(flags, expected):
    assert precision.choose_precision("auto", "cpu", None if flags is None else frozenset(flags)) == expected


def test_auto_elsewhere_and_explicit_choices():
    assert precision.choose_precision("auto", "cuda", cuda_bf16=True) == "bf16"
    assert precision.choose_precision("auto", "cuda", cuda_bf16=False) == "fp32"
    assert precision.choose_precision("auto", "mps", frozenset({"avx512_bf16"})) == "fp32"
    assert precision.choose_precision("bf16", "cpu", frozenset()) == "bf16"  # asked for: no detection
    assert precision.choose_precision("fp32", "cpu", frozenset({"amx_bf16"})) == "fp32"
    with pytest.raises(ValueError):
        precision.choose_precision("fp16", "cpu")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2\n"
    )
    assert precision.cpu_flags(str(cpuinfo)) == frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"})
    assert precision.cpu_flags(str(tmp_path / "missing")) is None


def test_summary_records_the_precision_that_ran(tmp_path, monkeypatch):
    """``auto`` on a CPU that reports avx512_bf16 (simulated, so the test does not depend on this machine): every
    update's target runs bfloat16, and summary.json records the request and the precision that ran."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    ran = []

    class Recording(targets.MLPTarget):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            ran.append(self.precision)

    monkeypatch.setattr(targets, "MLPTarget", Recording)
    cfg = compose_config(
        [
            "debug=tiny",
            "progress=silent",
            "threads=1",
            "sampler.precision=auto",
            "sampler.tabulate=off",
            "schedule.vae_epochs=2",
            "schedule.almond_epochs=2",
            "schedule.warmup_epochs=1",
            "checkpoint.every_minutes=0",
            "diagnostics.rhat_every_epochs=0",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    assert ran and set(ran) == {"bf16"}  # debug=tiny's MLP decoder: the fused target, one per update
    expected = {"requested": "auto", "langevin": "bf16", "tabulated": False}
    assert summary["precision"] == expected
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["precision"] == expected


def test_summary_records_a_tabulated_target(tmp_path, monkeypatch):
    """With ``sampler.tabulate=on`` the chains move under the table, whatever precision was asked: summary.json
    says so (the table is read in float32)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    cfg = compose_config(
        [
            "debug=tiny",
            "progress=silent",
            "threads=1",
            "sampler.precision=auto",
            "sampler.tabulate=on",
            "schedule.vae_epochs=2",
            "schedule.almond_epochs=2",
            "schedule.warmup_epochs=1",
            "checkpoint.every_minutes=0",
            "diagnostics.rhat_every_epochs=0",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["precision"] == {"requested": "auto", "langevin": "fp32", "tabulated": True}
