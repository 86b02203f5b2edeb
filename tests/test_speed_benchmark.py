"""benchmarks/speed.py's analytic FLOP count against torch's own FLOP counter, and one tiny end-to-end row."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from almond_cli.model.conv_networks import ConvDecoder
from almond_cli.model.networks import MLPDecoder

SPEED = Path(__file__).resolve().parent.parent / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Wrapped(torch.nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder


@pytest.mark.parametrize(
    "decoder,latent_dim",
    [
        (MLPDecoder(1, 1, [10]), 1),
        (MLPDecoder(5, 5, [128, 256]), 5),
        (ConvDecoder(3, 784, channels=[4, 6, 8], dense_units=32), 3),
    ],
)
def test_forward_multiply_adds_match_torch_flop_counter(speed, decoder, latent_dim):
    """2 × the hooks' multiply-adds = the FLOPs torch counts for the decoder's forward (Linear and conv layers)."""
    z = torch.randn(7, latent_dim)
    layers = speed.decoder_layers(Wrapped(decoder).eval(), z)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        decoder.eval()(z)
    assert 2.0 * sum(macs for _, _, macs in layers) == counter.get_total_flops()
    assert speed.step_flops(layers) == 2.0 * counter.get_total_flops()  # forward + input-gradient sweep


def test_exponential_row_times_both_paths(speed):
    row = speed.bench_workload("exponential", rounds=1, repeats=1, mnist_root=Path("/nonexistent"))
    assert (row["batch"], row["chains"], row["steps"], row["burn_in"]) == (1000, 100, 10, 9)  # mnn_exponential
    assert set(row["paths"]) == {"fast", "autograd"}
    assert row["step_gflop"] == pytest.approx(4 * 100_000 * (1 * 10 + 10 * 1) / 1e9)
    assert row["reference_gflops_same_shapes"] is None  # a 1 → 10 → 1 network has no matmul-bound layer
    for result in row["paths"].values():
        assert 0 < result["ms_per_step"] < result["ms_per_update"]
