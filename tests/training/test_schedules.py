from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from almond_cli.training.schedules import AlmondOptimisers, langevin_step_size


def test_langevin_step_size_is_the_papers_max_of_floor_and_inverse_sqrt():
    cfg = SimpleNamespace(step_size=0.01, step_size_decay="inv_sqrt", min_step_size_fraction=0.1)
    assert langevin_step_size(cfg, 0) == 0.01
    assert abs(langevin_step_size(cfg, 3) - 0.005) < 1e-15
    assert abs(langevin_step_size(cfg, 1000) - 0.001) < 1e-15  # floored at s / 10
    cfg.step_size_decay = "constant"
    assert langevin_step_size(cfg, 500) == 0.01


def test_adam_during_warmup_then_sgd_with_inverse_sqrt_learning_rate():
    cfg = SimpleNamespace(adam_lr=0.01, sgd_lr=0.01, sgd_momentum=0.1, weight_decay=0.001, warmup_epochs=100)
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimisers = AlmondOptimisers([parameter], cfg)
    assert isinstance(optimisers.for_epoch(99), torch.optim.Adam)
    sgd = optimisers.for_epoch(100)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.01
    assert abs(optimisers.for_epoch(103).param_groups[0]["lr"] - 0.005) < 1e-15
    assert sgd.param_groups[0]["momentum"] == 0.1 and sgd.param_groups[0]["weight_decay"] == 0.001


def _schedule(**overrides):
    """A ``schedule`` config as a run holds it (a DictConfig); keys left out are those an older run lacks."""
    base = {
        "adam_lr": 0.02,
        "sgd_lr": 0.01,
        "sgd_momentum": 0.1,
        "weight_decay": 0.001,
        "warmup_epochs": 4,
        "almond_epochs": 10,
    }
    return OmegaConf.create({**base, **overrides})


def test_the_same_schedule_as_a_dictconfig_keeps_the_papers_sgd():
    """The test above with the config type the trainer passes; with and without the new keys (an old run)."""
    for cfg in (_schedule(), _schedule(after_warmup="sgd", average_last=0.0)):
        optimisers = AlmondOptimisers([torch.nn.Parameter(torch.zeros(2))], cfg)
        assert isinstance(optimisers.for_epoch(3), torch.optim.Adam)
        assert optimisers.for_epoch(3).param_groups[0]["lr"] == 0.02
        sgd = optimisers.for_epoch(4)
        assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.01
        assert abs(optimisers.for_epoch(7).param_groups[0]["lr"] - 0.005) < 1e-15


def test_adam_after_warmup_keeps_adam_with_inverse_sqrt_learning_rate():
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimisers = AlmondOptimisers([parameter], _schedule(after_warmup="adam"))
    warm = optimisers.for_epoch(3)
    assert warm.param_groups[0]["lr"] == 0.02
    for epoch, k in ((4, 0), (5, 1), (7, 3), (103, 99)):  # k = e - warmup: lr = adam_lr / sqrt(k + 1)
        optimiser = optimisers.for_epoch(epoch)
        assert optimiser is warm  # the same Adam, its moments carried on from warm-up
        assert abs(optimiser.param_groups[0]["lr"] - 0.02 / (k + 1) ** 0.5) < 1e-15
        assert abs(optimisers.learning_rate(epoch) - 0.02 / (k + 1) ** 0.5) < 1e-15


def _run_epochs(optimisers, parameters, epochs, seed=0):
    """Fake ALMOND epochs: each sets the parameters to new values then calls after_step; returns the values."""
    generator = torch.Generator().manual_seed(seed)
    seen = []
    for epoch in epochs:
        with torch.no_grad():
            for parameter in parameters:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        seen.append([parameter.detach().clone() for parameter in parameters])
        optimisers.after_step(epoch)
    return seen


def test_average_last_is_the_exact_running_mean_over_the_last_share():
    parameters = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    optimisers = AlmondOptimisers(parameters, _schedule(average_last=0.3))  # the last 3 of 10 epochs
    assert optimisers.average_start() == 7
    seen = _run_epochs(optimisers, parameters, range(10))
    assert optimisers.averaged == 3
    for index, parameter in enumerate(parameters):
        manual = torch.stack([values[index] for values in seen[7:]]).mean(0)
        torch.testing.assert_close(optimisers.average[index], manual, rtol=0, atol=1e-6)
        torch.testing.assert_close(parameter.detach(), seen[-1][index])  # not used until asked
    optimisers.use_average()
    for index, parameter in enumerate(parameters):
        torch.testing.assert_close(parameter.detach(), torch.stack([v[index] for v in seen[7:]]).mean(0))
    # the average is a copy, not the parameters themselves
    with torch.no_grad():
        parameters[0].add_(1.0)
    assert not torch.equal(optimisers.average[0], parameters[0].detach())


def test_the_average_survives_a_state_dict_round_trip():
    parameters = [torch.nn.Parameter(torch.zeros(3))]
    optimisers = AlmondOptimisers(parameters, _schedule(average_last=0.5))  # epochs 5..9
    _run_epochs(optimisers, parameters, range(7))
    state = optimisers.state_dict()
    assert state["average"]["count"] == 2
    resumed_parameters = [torch.nn.Parameter(parameters[0].detach().clone())]
    resumed = AlmondOptimisers(resumed_parameters, _schedule(average_last=0.5))
    resumed.load_state_dict(state)
    assert resumed.averaged == 2
    torch.testing.assert_close(resumed.average[0], optimisers.average[0], rtol=0, atol=0)
    state["average"]["mean"][0].add_(5.0)  # the loaded average is its own copy
    assert not torch.equal(resumed.average[0], state["average"]["mean"][0])
    # going on from the saved state gives the same mean as never stopping
    _run_epochs(optimisers, parameters, range(7, 10), seed=1)
    _run_epochs(resumed, resumed_parameters, range(7, 10), seed=1)
    torch.testing.assert_close(resumed.average[0], optimisers.average[0], rtol=0, atol=0)
    assert resumed.averaged == optimisers.averaged == 5


def test_average_last_zero_changes_nothing():
    for cfg in (_schedule(average_last=0.0), _schedule()):
        parameters = [torch.nn.Parameter(torch.zeros(3))]
        optimisers = AlmondOptimisers(parameters, cfg)
        assert optimisers.average_start() is None
        seen = _run_epochs(optimisers, parameters, range(10))
        assert optimisers.average is None and optimisers.averaged == 0
        optimisers.use_average()
        torch.testing.assert_close(parameters[0].detach(), seen[-1][0], rtol=0, atol=0)
        assert set(optimisers.state_dict()) == {"adam", "sgd"}  # a checkpoint as before the key
        fresh = AlmondOptimisers([torch.nn.Parameter(torch.zeros(3))], cfg)
        fresh.load_state_dict(optimisers.state_dict())
        assert fresh.average is None and fresh.averaged == 0
