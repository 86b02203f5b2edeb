"""Held-out marginal log-likelihoods (``data.holdout_fraction``): the same estimator and closed forms as the training
rows' ``train_nll``, on rows no fit has seen."""

from __future__ import annotations

import math

import torch
from conftest import compose_config

from almond_cli.model.marginal import estimate_with
from almond_cli.tasks.normal_means import NormalMeansTask
from almond_cli.tasks.registry import build_dataset
from almond_cli.training.build import build_model


def test_heldout_scores_of_the_model_and_the_exact_baselines():
    cfg = compose_config(["debug=tiny", "data.holdout_fraction=0.25", "evaluation.nll_samples=50"])
    dataset = build_dataset(cfg.data, 0)
    heldout = dataset.heldout
    assert (dataset.num_points, heldout.num_points) == (150, 50)
    torch.manual_seed(0)
    model = build_model(cfg, dataset)  # untrained: the baselines do not depend on it, the gain pairs it row by row
    task = NormalMeansTask()
    scores = task.score(model, dataset, cfg, "cpu")
    baselines = task.baselines(model, dataset, cfg, "cpu", {})

    # The model: the importance-sampling estimator on the held-out rows alone.
    almond = estimate_with(cfg.evaluation, model, heldout.x, with_mean_u=True)
    assert scores["heldout_nll"] == float(-almond.log_marginal.mean())
    assert scores["heldout_nll_se"] == float(almond.log_marginal.std()) / math.sqrt(50)
    mse = float((almond.posterior_mean_u - heldout.truth.double()).square().mean())
    assert scores["heldout_mse_posterior_mean"] == mse
    assert scores["train_nll"] != scores["heldout_nll"]

    # Normal EB by hand: u ~ N(m, v) fitted by maximum likelihood to the training rows only (one sigma: the mean and
    # the variance with divisor n, minus sigma²), x = u + N(0, sigma²), so a held-out x ~ N(m, v + sigma²).
    sigma = float(cfg.likelihood.sigma)
    train_x, heldout_x = dataset.x[:, 0].double().numpy(), heldout.x[:, 0].double().numpy()
    mean, variance = train_x.mean(), max(train_x.var(ddof=0) - sigma**2, 0.0)
    total = variance + sigma**2
    log_density = -0.5 * ((heldout_x - mean) ** 2 / total + math.log(2 * math.pi * total))
    normal_eb = baselines["normal_eb"]
    assert abs(normal_eb["heldout_nll"] - float(-log_density.mean())) < 1e-12
    assert abs(normal_eb["heldout_nll_se"] - log_density.std(ddof=1) / math.sqrt(50)) < 1e-12
    # ... and not the same prior refitted to every row, held-out ones included (a leak this test would see).
    every_x = torch.cat([dataset.x, heldout.x])[:, 0].double().numpy()
    leaked_total = max(every_x.var(ddof=0) - sigma**2, 0.0) + sigma**2
    leaked = -0.5 * ((heldout_x - every_x.mean()) ** 2 / leaked_total + math.log(2 * math.pi * leaked_total))
    assert abs(normal_eb["heldout_nll"] - float(-leaked.mean())) > 1e-6

    # Both baselines: the held-out gain is paired row by row against the model's same estimate.
    for name in ("normal_eb", "npmle"):
        metrics = baselines[name]
        assert abs(metrics["almond_heldout_gain"] - (metrics["heldout_nll"] - scores["heldout_nll"])) < 1e-9
        assert metrics["almond_heldout_gain_se"] > 0 and "heldout_mse_posterior_mean" in metrics
        assert metrics["heldout_nll"] != metrics["train_nll"]


def test_no_heldout_scores_without_held_out_rows():
    cfg = compose_config(["debug=tiny", "evaluation.nll_samples=5"])
    dataset = build_dataset(cfg.data, 0)
    torch.manual_seed(0)
    model = build_model(cfg, dataset)
    task = NormalMeansTask()
    scores = {"model": task.score(model, dataset, cfg, "cpu"), **task.baselines(model, dataset, cfg, "cpu", {})}
    assert all(not any("heldout" in metric for metric in metrics) for metrics in scores.values())
