from types import SimpleNamespace

import torch

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
