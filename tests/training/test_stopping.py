"""When training is done (``training/stopping.py``): the auto stopping rule on synthetic check sequences, the
checks' epochs, the still-improving warning, the repair of a collapsed VAE warm start (``training/collapse.py``),
``auto`` in the config, and ``data=file`` defaulting to it."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from almond_cli.commands.cli import auto_epochs_for_data
from almond_cli.config import ConfigError, validate
from almond_cli.training.collapse import COLLAPSE_RATIO, is_collapsed, repair_collapsed_warm_start
from almond_cli.training.schedules import AlmondOptimisers
from almond_cli.training.stopping import (
    ProgressChecks,
    check_due,
    check_epochs,
    epoch_limit,
    still_improving_message,
    suggested_epochs,
)

ROWS = 400
NOISE = 0.05  # per-row noise of a check's log p̂, independent between checks: the paired SE is NOISE·sqrt(2/ROWS)
PAIRED_SE = NOISE * (2 / ROWS) ** 0.5  # 0.0035 nats per row


def checks_of(means: list[float], window: int = 5, noise: float = NOISE, seed: int = 0) -> ProgressChecks:
    """A ``ProgressChecks`` fed checks whose per-row log-likelihoods are a fixed spread of rows plus ``means[t]``
    plus fresh noise of sd ``noise`` (the rows' spread cancels in the paired gain, as with real paired checks)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(ROWS, generator=generator, dtype=torch.float64)  # the rows' own spread, sd 1 >> NOISE
    checks = ProgressChecks(window)
    for index, mean in enumerate(means):
        checks.add(rows + mean + noise * torch.randn(ROWS, generator=generator, dtype=torch.float64), 10 * (index + 1))
    return checks


def first_done(means: list[float], window: int = 5, noise: float = NOISE) -> int | None:
    """The number of checks after which the rule first says done, or None."""
    for count in range(1, len(means) + 1):
        if checks_of(means[:count], window, noise).done():
            return count
    return None


def test_a_plateau_stops_after_window_checks_without_a_gain():
    # Rising for 6 checks, then exactly flat: the incumbent is the 6th; 5 flat checks later it is done.
    rise = [10 * PAIRED_SE * t for t in range(6)]
    means = rise + [rise[-1]] * 10
    assert first_done(means, noise=0.0) == 6 + 5
    checks = checks_of(means[:11], noise=0.0)
    assert checks.incumbent_epoch == 60 and not checks.still_improving()


def test_a_noisy_plateau_stops_too():
    # On a plateau a check beats the incumbent by more than its SE by chance 16% of the time (a one-sided 1-SE
    # test), which restarts the count: 5 in a row take about 9 checks on average; within 40 all but surely.
    assert first_done([0.0] * 40) is not None


def test_the_still_improving_verdict_rarely_fires_on_a_plateau():
    # The verdict is one 2-SE test of the last check against the one 5 checks before it: on a plateau it should fire
    # about 2% of the time (where "any of the last 5 checks beat the best by 1 SE" fired ~58%). Over 50 plateaus
    # (seeds), expected ~1.1; at most 5 bounds a Binomial(50, 0.023) with probability > 0.998.
    fired = sum(checks_of([0.0] * 12, seed=seed).still_improving() for seed in range(50))
    assert fired <= 5


def test_a_steady_rise_never_stops_even_below_one_se_per_check():
    # 0.8 SE per check: a single interval often does not count, but the gain over the incumbent reaches 2.4-4 SE
    # after 3-5 checks (significant with probability 0.92-0.9999), so 5 checks in a row without a gain have a chance
    # near 1e-7 per incumbent: the comparison is with the incumbent, not the previous check.
    means = [0.8 * PAIRED_SE * t for t in range(60)]
    assert first_done(means) is None
    checks = checks_of(means)
    # over the last 5 checks it rose 4 x 0.8 = 3.2 SE: beyond the warning's 2 SE (with probability 0.89)
    assert checks.gains >= 10 and checks.still_improving()


def test_a_shorter_window_stops_where_a_longer_one_does_not():
    means = [10 * PAIRED_SE * t for t in range(4)] + [30 * PAIRED_SE] * 3
    assert first_done(means, window=3, noise=0.0) == 7
    assert first_done(means, window=4, noise=0.0) is None


def test_the_first_check_alone_is_neither_done_nor_improving():
    checks = checks_of([0.0])
    assert not checks.done() and not checks.still_improving() and checks.checks[0].significant is False


def test_state_round_trip_continues_the_same_decisions():
    means = [10 * PAIRED_SE * t for t in range(4)] + [30 * PAIRED_SE] * 2
    checks = checks_of(means, noise=0.0)
    again = ProgressChecks.from_state_dict(checks.state_dict(), 5)
    assert again.state_dict()["since_gain"] == checks.since_gain == 2
    assert torch.equal(again.incumbent, checks.incumbent) and again.checks == checks.checks


def test_a_halved_plateau_gets_a_new_window_and_the_halvings_survive_a_checkpoint():
    rise = [10 * PAIRED_SE * t for t in range(6)]
    checks = checks_of(rise + [rise[-1]] * 5, noise=0.0)
    assert checks.done() and checks.rate_factor == 1.0
    checks.halve()
    assert not checks.done() and checks.halvings == 1 and checks.rate_factor == 0.5
    again = ProgressChecks.from_state_dict(checks.state_dict(), 5)
    assert again.halvings == 1 and again.rate_factor == 0.5 and not again.done()
    old = checks.state_dict()
    del old["halvings"]  # a checkpoint saved before halvings
    assert ProgressChecks.from_state_dict(old, 5).rate_factor == 1.0


def test_the_learning_rates_carry_the_plateaus_factor():
    from omegaconf import OmegaConf

    schedule = OmegaConf.create(
        {"warmup_epochs": 3, "adam_lr": 0.01, "sgd_lr": 0.02, "sgd_momentum": 0.1, "weight_decay": 0.0}
    )
    optimisers = AlmondOptimisers([torch.nn.Parameter(torch.zeros(1))], schedule)
    assert optimisers.learning_rate(0, 0.25) == pytest.approx(0.0025)
    assert optimisers.learning_rate(3, 0.25) == pytest.approx(0.005)  # SGD's 0.02 / sqrt(1), quartered
    assert optimisers.for_epoch(0, 0.25).param_groups[0]["lr"] == pytest.approx(0.0025)


def test_one_unit_uses_the_monte_carlo_standard_error():
    checks = ProgressChecks(2)
    checks.add(torch.tensor([-100.0]), 10, torch.tensor([0.01]))
    gain = checks.add(torch.tensor([-99.9]), 20, torch.tensor([0.01]))  # +0.1 against an SE of sqrt(0.02) = 0.14
    assert gain.gain_se == pytest.approx(0.02**0.5) and not gain.significant
    assert checks.add(torch.tensor([-99.0]), 30, torch.tensor([0.01])).significant


AUTO = {"every": 10, "window": 5, "max_vae_epochs": 300, "max_almond_epochs": 2000, "nll_samples": 100}


def schedule(vae, almond):
    from omegaconf import OmegaConf

    return OmegaConf.create({"vae_epochs": vae, "almond_epochs": almond, "auto": AUTO})


def test_the_cap_and_the_checks_epochs():
    auto = schedule("auto", "auto")
    assert epoch_limit(auto, "almond") == 2000 and epoch_limit(auto, "vae") == 300
    assert check_due(auto, "almond", 20) and not check_due(auto, "almond", 25) and check_due(auto, "almond", 2000)
    fixed = schedule(300, 200)
    assert epoch_limit(fixed, "almond") == 200
    assert check_epochs(fixed, "almond") == [150, 200]  # the two checks the verdict compares
    assert check_epochs(schedule(300, 20), "almond") == [10, 20]
    assert check_epochs(fixed, "vae") == [] and not check_due(fixed, "vae", 10)


def test_the_still_improving_warning_says_how_to_extend_the_run():
    means = [10 * PAIRED_SE * t for t in range(6)]
    checks = checks_of(means, noise=0.0)
    assert checks.still_improving()
    text = still_improving_message("outputs/2026-12-02/07-00-00", checks, 200, "held-out")
    assert "almond train resume=outputs/2026-12-02/07-00-00 schedule.almond_epochs=400" in text
    assert "still improving" in text and "held-out rows" in text and "since epoch 10" in text
    assert suggested_epochs(200) == 400 and suggested_epochs(1) == 100 and suggested_epochs(2000) == 4000


def test_averaging_under_auto_restarts_at_each_gain():
    parameter = torch.nn.Parameter(torch.zeros(1))
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "adam_lr": 0.01,
            "sgd_lr": 0.01,
            "sgd_momentum": 0.1,
            "weight_decay": 0.0,
            "warmup_epochs": 5,
            "almond_epochs": "auto",
            "average_last": 0.5,
        }
    )
    optimisers = AlmondOptimisers([parameter], cfg)
    assert optimisers.average_start() == 0
    for value in (1.0, 2.0):
        parameter.data.fill_(value)
        optimisers.after_step(0)
    optimisers.restart_average()
    for value in (10.0, 20.0):
        parameter.data.fill_(value)
        optimisers.after_step(1)
    optimisers.use_average()
    assert float(parameter.detach()) == 15.0  # the mean since the restart only


# ----- a collapsed warm start ---------------------------------------------------------------------------------


def test_collapse_is_a_spread_far_below_the_signal():
    assert is_collapsed(torch.tensor([0.003]), torch.tensor([0.03]))
    assert not is_collapsed(torch.tensor([0.015]), torch.tensor([0.03]))  # half the signal: a VAE's usual shortfall
    assert not is_collapsed(torch.tensor([0.0]), torch.tensor([0.0]))  # no signal to speak of
    assert COLLAPSE_RATIO == 0.25


def gaussian_model_and_data(output_scale: float):
    """A tiny fitted-looking model (MLP decoder shrunk by ``output_scale``) and data of signal sd 0.5, noise 0.1."""
    from almond_cli.model.likelihoods import Gaussian
    from almond_cli.model.model import LatentVariableModel
    from almond_cli.model.networks import MLPDecoder, MLPEncoder

    torch.manual_seed(0)
    decoder = MLPDecoder(1, 1, [8])
    with torch.no_grad():
        decoder.net[-1].weight.mul_(output_scale)
    model = LatentVariableModel(MLPEncoder(1, 1, [8]), decoder, Gaussian(sigma=0.1))
    generator = torch.Generator().manual_seed(1)
    x = (2.0 + 0.5 * torch.randn(2000, 1, generator=generator)) + 0.1 * torch.randn(2000, 1, generator=generator)

    class Rows:
        pass

    dataset = Rows()
    dataset.x = x
    return model, dataset


def test_a_collapsed_mlp_decoder_restarts_as_the_normal_prior_and_a_healthy_one_is_left_alone():
    from omegaconf import OmegaConf

    from almond_cli.tasks.empirical_bayes import fit_normal_prior
    from almond_cli.tasks.normal_means import NormalMeansTask

    cfg = OmegaConf.create({"seed": 4, "latent_dim": 1, "evaluation": {"num_draws": 5000, "seed": 3}})
    model, data = gaussian_model_and_data(1e-3)
    state = torch.random.get_rng_state()
    found = repair_collapsed_warm_start(model, NormalMeansTask(), data, cfg, "cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the training's random stream is untouched
    assert found is not None and found["repaired"] and found["u_sd"][0] < 0.01
    prior = fit_normal_prior(data.x[:, 0], 0.1)
    decoder = model.decoder
    assert float(decoder.output_shift) == pytest.approx(prior.mean, rel=1e-6)
    assert float(decoder.output_scale) == pytest.approx(prior.sd, rel=1e-6)
    # u = h(z) is near the normal prior's quantile function m + s z: the fit of net(z) = z leaves at most 0.012 over
    # |z| <= 2 in seeds 1-3 (collapse.py), so 0.03 prior sds has room; an unfitted network is off by about 1
    z = torch.linspace(-2, 2, 401).unsqueeze(1)
    with torch.no_grad():
        error = (decoder(z) - (prior.mean + prior.sd * z)).abs().max()
    assert float(error) < 0.03 * prior.sd
    # the restarted model spreads as the signal does: checked again, it is left alone, bitwise
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert repair_collapsed_warm_start(model, NormalMeansTask(), data, cfg, "cpu") is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_restarted_decoder_takes_adam_steps_in_prior_sds_whatever_the_data_units():
    """Why the restart keeps the prior's mean and sd outside the weights: Adam moves each weight by about its
    learning rate, so on data whose signal sd is 0.03 (batting averages) weights carrying the scale would move u by
    several prior sds per step; behind the output affine one step moves u by about a tenth of one, as on data of
    unit scale."""
    from omegaconf import OmegaConf

    from almond_cli.tasks.normal_means import NormalMeansTask

    cfg = OmegaConf.create({"seed": 4, "latent_dim": 1, "evaluation": {"num_draws": 5000, "seed": 3}})
    z = torch.linspace(-2, 2, 201).unsqueeze(1)
    for units in (1.0, 0.05):  # the same data in two units: a signal sd of 0.5, then of 0.025
        model, data = gaussian_model_and_data(1e-3)
        data.x = data.x * units
        model.likelihood.sigma = model.likelihood.sigma * units
        found = repair_collapsed_warm_start(model, NormalMeansTask(), data, cfg, "cpu")
        sd = found["signal_sd"][0]
        with torch.no_grad():
            before = model.decoder(z)
        optimiser = torch.optim.Adam(model.decoder.parameters(), lr=0.01)
        model.decoder(z).sum().backward()  # any loss: Adam's first step is lr · sign(gradient)
        optimiser.step()
        with torch.no_grad():
            moved = float((model.decoder(z) - before).abs().max())
        assert 0.02 * sd < moved < 0.3 * sd, (units, moved / sd)


def test_a_collapsed_linear_decoder_is_rescaled_to_the_normal_prior():
    """A linear decoder is the normal prior already: its output layer is rescaled, exactly."""
    from omegaconf import OmegaConf

    from almond_cli.model.networks import LinearDecoder
    from almond_cli.tasks.empirical_bayes import fit_normal_prior
    from almond_cli.tasks.metrics import latent_draws
    from almond_cli.tasks.normal_means import NormalMeansTask

    cfg = OmegaConf.create({"latent_dim": 1, "evaluation": {"num_draws": 5000, "seed": 3}})
    model, data = gaussian_model_and_data(1e-3)
    model.decoder = LinearDecoder(1, 1)
    with torch.no_grad():
        model.decoder.linear.weight.fill_(1e-3)
    found = repair_collapsed_warm_start(model, NormalMeansTask(), data, cfg, "cpu")
    assert found is not None and found["repaired"]
    prior = fit_normal_prior(data.x[:, 0], 0.1)
    draws = latent_draws(model, cfg, "cpu").double()[:, 0]
    # the same z draws before and after: the affine rescale puts their mean and sd on the prior's, up to float32
    assert float(draws.mean()) == pytest.approx(prior.mean, abs=1e-3 * prior.sd)
    assert float(draws.std()) == pytest.approx(prior.sd, rel=1e-3)


# ----- the config ---------------------------------------------------------------------------------------------


def test_auto_is_accepted_and_nonsense_refused_naming_the_key():
    validate(compose_config(["schedule.almond_epochs=auto", "schedule.vae_epochs=auto"]))
    validate(compose_config(["schedule.almond_epochs=0"]))
    for key in ("almond_epochs", "vae_epochs"):
        for value in ("-3", "fast", "2.5", "true"):
            with pytest.raises(ConfigError) as error:
                validate(compose_config([f"schedule.{key}={value}"]))
            assert error.value.key == f"schedule.{key}" and "or auto" in str(error.value)
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["schedule.auto.window=0"]))
    assert error.value.key == "schedule.auto.window"
    validate(compose_config(["schedule.auto.halvings=0"]))
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["schedule.auto.halvings=-1"]))
    assert error.value.key == "schedule.auto.halvings"


def test_a_bad_epoch_count_exits_2_with_one_line(capsys):
    from almond_cli.commands import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "schedule.almond_epochs=fast"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert stopped.value.code == 2 and len(lines) == 1 and "schedule.almond_epochs" in lines[0], err


def test_data_file_trains_until_done_unless_told_otherwise():
    file = ["experiment=mnn_mixture_fast", "data=file", "data.path=m.csv"]
    auto = ["schedule.vae_epochs=auto", "schedule.almond_epochs=auto", "schedule.warmup_epochs=2000"]
    assert auto_epochs_for_data(file) == [*file, *auto]
    # Adam at its constant rate up to the cap, the cap as given; a given warm-up or epoch count is the user's
    capped = auto_epochs_for_data([*file, "schedule.auto.max_almond_epochs=500"])
    assert capped[-1] == "schedule.warmup_epochs=500"
    assert auto_epochs_for_data([*file, "schedule.warmup_epochs=50"])[-1] == "schedule.almond_epochs=auto"
    assert auto_epochs_for_data([*file, "schedule.almond_epochs=300"])[-1] == "schedule.vae_epochs=auto"
    for kept in (["debug=tiny"], ["resume=outputs/x"], ["warm_start=outputs/x"]):
        assert auto_epochs_for_data([*file, *kept]) == [*file, *kept]
    mixed = ["experiment=mixed", "data=mixed"]
    assert auto_epochs_for_data(mixed) == mixed and auto_epochs_for_data([]) == []


def test_the_mixed_preset_trains_its_almond_phase_until_done_with_checks_50_epochs_apart():
    """experiment=mixed brings auto itself (its VAE phase stays a fixed 300 epochs: a second or so)."""
    cfg = compose_config(["experiment=mixed", "data.path=t.csv", 'data.formula="y ~ 1 + (1|g)"'])
    validate(cfg)
    assert cfg.schedule.almond_epochs == "auto" and cfg.schedule.vae_epochs == 300
    assert check_epochs(cfg.schedule, "almond") is None
    assert check_due(cfg.schedule, "almond", 50) and not check_due(cfg.schedule, "almond", 10)
    assert epoch_limit(cfg.schedule, "almond") == 2000


# ----- a run ----------------------------------------------------------------------------------------------------

AUTO_RUN = [
    "debug=tiny",
    "progress=silent",
    "threads=1",
    "schedule.vae_epochs=4",
    "schedule.almond_epochs=auto",
    "schedule.auto.every=2",
    "schedule.auto.window=2",
    "schedule.auto.max_almond_epochs=12",
    "schedule.auto.nll_samples=20",
    "evaluation.nll_samples=50",
    "diagnostics.rhat_every_epochs=0",
    "checkpoint.every_minutes=0",
]


@pytest.mark.slow
def test_an_auto_run_records_its_checks_and_a_finished_run_extends(tmp_path):
    import json

    from almond_cli.training.checkpoint import load_checkpoint
    from almond_cli.training.trainer import train

    summary = train(compose_config(AUTO_RUN), tmp_path)
    timing = summary["timing"]
    assert timing["vae_epochs_run"] == 4 and timing["stopped_because"]["vae"] == "epochs"
    run = timing["almond_epochs_run"]
    assert 2 * 3 <= run <= 12 and timing["stopped_because"]["almond"] == ("cap" if run == 12 else "no_gain")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    checked = [r["epoch"] for r in records if r["phase"] == "almond" and "check_nll" in r]
    assert checked == list(range(2, run + 1, 2))
    assert not any("check_nll" in r for r in records if r["phase"] == "vae")  # a fixed VAE phase never checks
    # resumed with a fixed, larger count, the finished run goes on from where it stopped
    longer = train(
        compose_config([*AUTO_RUN, f"schedule.almond_epochs={run + 4}"]),
        tmp_path,
        checkpoint=load_checkpoint(tmp_path / "checkpoints" / "last.pt"),
    )
    assert longer["timing"]["almond_epochs_run"] == run + 4
    assert longer["timing"]["stopped_because"]["almond"] == "epochs"
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-(run + 4) :] == list(range(1, run + 5))


def test_an_auto_run_halves_its_rate_at_its_first_plateaus_and_a_resume_keeps_it(tmp_path):
    """Checks every epoch, a window of 1, and a rate (1e-12) too small to move a float32 weight: every check after
    the first is a plateau, exactly. Epoch 2's and 3's are met by halving the rate, epoch 4's stops the phase; extended
    by resume, the run goes on at the last rate."""
    import json

    from almond_cli.training.checkpoint import load_checkpoint
    from almond_cli.training.trainer import train

    flat = [*AUTO_RUN, "schedule.auto.every=1", "schedule.auto.window=1", "schedule.warmup_epochs=100"]
    flat.append("schedule.adam_lr=1e-12")
    summary = train(compose_config(flat), tmp_path)
    assert summary["timing"]["almond_epochs_run"] == 4 and summary["timing"]["stopped_because"]["almond"] == "no_gain"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records if r["phase"] == "almond"]
    assert [rate / 1e-12 for rate in rates] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    longer = train(
        compose_config([*flat, "schedule.almond_epochs=6"]),
        tmp_path,
        checkpoint=load_checkpoint(tmp_path / "checkpoints" / "last.pt"),
    )
    assert longer["timing"]["almond_epochs_run"] == 6
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] / 1e-12 for r in records if r["phase"] == "almond"][-2:] == pytest.approx([0.25, 0.25])
