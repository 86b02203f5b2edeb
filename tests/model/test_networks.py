"""The fully connected networks' initialisations."""

import pytest
import torch
from torch import nn

from almond_cli.model.networks import MLPDecoder, MLPEncoder, Tanh, make_mlp


def linears(net):
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def test_xavier_uniform_starts_zero_biases_and_glorot_weights():
    torch.manual_seed(0)
    net = make_mlp(200, [300], 1, "softplus", init="xavier_uniform")
    for layer in linears(net):
        fan_out, fan_in = layer.weight.shape
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert torch.count_nonzero(layer.bias) == 0
        assert float(layer.weight.detach().abs().max()) <= bound
    # U(-b, b) has variance b²/3; the 60,000 weights of the first layer estimate it with a relative standard error
    # of sqrt(0.8 / 60000) ≈ 0.4 %, so 3 % is over seven standard errors, while torch's default (bound
    # 1/sqrt(200) ≈ 0.071 against Glorot's 0.110) is 58 % off.
    first = linears(net)[0].weight.detach()
    glorot_variance = 6.0 / (200 + 300) / 3.0
    assert abs(float(first.var()) / glorot_variance - 1.0) < 0.03


def test_pytorch_init_is_torchs_own_default():
    torch.manual_seed(0)
    ours = make_mlp(3, [5], 2, "tanh")
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    for mine, theirs in zip(ours.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert any(torch.count_nonzero(layer.bias) > 0 for layer in linears(ours))


def test_encoder_and_decoder_pass_the_init_on():
    for network in (MLPEncoder(1, 1, [10], init="xavier_uniform"), MLPDecoder(1, 1, [10], init="xavier_uniform")):
        assert all(torch.count_nonzero(layer.bias) == 0 for layer in linears(network))


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="he_normal"):
        make_mlp(1, [4], 1, "softplus", init="he_normal")


def test_the_tanh_activation_is_tanh_in_value_and_gradient():
    """The tanh of make_mlp (computed through a sigmoid, for speed) is tanh: within 2e-7 in float32 (a few ulps of 1;
    measured 1.8e-7), to rounding in float64, and its backward is tanh's derivative 1 − tanh²; it still is an
    nn.Tanh, which the tabulated target's smoothness check and the MLP target look for."""
    net = make_mlp(1, [4], 1, "tanh")
    assert isinstance(net[1], nn.Tanh) and type(net[1]) is Tanh
    x = torch.linspace(-20, 20, 400_001)
    assert float((net[1](x) - torch.tanh(x)).abs().max()) < 2e-7
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64, requires_grad=True)
    y = net[1](x)
    assert float((y - torch.tanh(x)).abs().max().detach()) < 1e-15
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(grad, 1 - torch.tanh(x.detach()) ** 2, atol=1e-15)


def test_a_decoder_saved_before_the_output_affine_loads_as_the_identity():
    """Checkpoints from before ``output_shift`` / ``output_scale`` keep loading (strictly) and give the same u."""
    torch.manual_seed(0)
    saved = MLPDecoder(1, 2, [6])
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith("output_")}
    loaded = MLPDecoder(1, 2, [6])
    loaded.output_shift.fill_(5.0)
    loaded.output_scale.fill_(3.0)
    loaded.load_state_dict(state)
    z = torch.randn(7, 1)
    assert torch.equal(loaded(z), saved(z)) and torch.equal(loaded(z), saved.net(z))


def test_the_output_affine_is_applied_and_saved():
    torch.manual_seed(0)
    decoder = MLPDecoder(1, 2, [6])
    decoder.output_shift.copy_(torch.tensor([0.5, -1.0]))
    decoder.output_scale.copy_(torch.tensor([0.03, 2.0]))
    z = torch.randn(7, 1)
    torch.testing.assert_close(decoder(z), torch.tensor([0.5, -1.0]) + torch.tensor([0.03, 2.0]) * decoder.net(z))
    copy = MLPDecoder(1, 2, [6])
    copy.load_state_dict(decoder.state_dict())
    assert torch.equal(copy(z), decoder(z))


def test_rescaling_a_decoder_behind_an_output_affine_is_exact():
    """scale_decoder_output keeps h'(z) = scale · h(z) + shift whatever the output affine (training/collapse.py's
    fallback rescale of a decoder that was restarted before)."""
    from almond_cli.model.networks import scale_decoder_output

    torch.manual_seed(0)
    decoder = MLPDecoder(1, 2, [6])
    decoder.output_shift.copy_(torch.tensor([0.5, -1.0]))
    decoder.output_scale.copy_(torch.tensor([0.03, 2.0]))
    z = torch.randn(9, 1)
    with torch.no_grad():
        before = decoder(z)
    scale, shift = torch.tensor([4.0, 0.5]), torch.tensor([1.0, 3.0])
    assert scale_decoder_output(decoder, scale, shift)
    with torch.no_grad():
        torch.testing.assert_close(decoder(z), scale * before + shift, rtol=1e-5, atol=1e-5)
