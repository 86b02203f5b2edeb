"""Every option of every config group composes, validates and (where it builds objects) instantiates."""

import re
from pathlib import Path

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from almond_cli.config import ConfigError, validate
from almond_cli.errors import UsageError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_the_default_is_the_papers_exponential_experiment():
    cfg = compose_config([])
    assert cfg.experiment_name == "mnn_exponential"
    assert cfg.data.name == "normal_means" and cfg.data.n == 1000 and cfg.data.prior.value == "exponential"
    assert list(cfg.encoder.hidden_sizes) == [10] and list(cfg.decoder.hidden_sizes) == [10]
    assert cfg.decoder.activation == "softplus" and cfg.latent_dim == 1
    assert cfg.encoder.init == "xavier_uniform" and cfg.decoder.init == "xavier_uniform"
    assert (cfg.sampler.step_size, cfg.sampler.num_steps, cfg.sampler.burn_in, cfg.sampler.num_chains) == (
        0.01,
        10,
        9,
        100,
    )
    schedule = cfg.schedule
    assert (schedule.vae_epochs, schedule.almond_epochs, schedule.warmup_epochs) == (1000, 1000, 100)
    assert (schedule.vae_lr, schedule.adam_lr, schedule.sgd_lr, schedule.sgd_momentum, schedule.weight_decay) == (
        0.01,
        0.01,
        0.01,
        0.1,
        0.001,
    )
    assert schedule.vae_draws == 10 and schedule.batch_size is None


def _needs_a_missing_extra(group: str, option: str) -> str | None:
    """Why ``group=option`` cannot compose here: the optional extra it needs is not installed (None if it is)."""
    from almond_cli.commands.extras import MissingExtraError, check_extras

    try:
        check_extras([f"{group}={option}"])
    except MissingExtraError as error:
        return str(error)
    return None


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_group_option_composes_and_validates(group):
    from almond_cli.commands.cli import drop_default_experiment

    skipped = []
    for option in options(group):
        missing = _needs_a_missing_extra(group, option)
        if missing:  # `pip install -e .` alone lacks, e.g., the sweep extra's Optuna sweeper: it cannot compose
            skipped.append(missing)
            continue
        # As the command does: another model-group option drops the default experiment's keys.
        cfg = compose_config(drop_default_experiment([f"{group}={option}"]))
        OmegaConf.to_yaml(cfg, resolve=True)
        try:
            validate(cfg)
        except UsageError as error:
            # An option that reads the user's files needs their path, and options that only work together
            # (data=glmm with likelihood=poisson_glmm) say which partner to choose; such an option must
            # then validate with the partner the message names (or need only the user's file path).
            message = str(error)
            if message.startswith("data."):
                continue
            partner = re.search(r"(?:needs|use) (\w+=\w+)", message)
            assert isinstance(error, ConfigError) and partner, error
            paired = compose_config(drop_default_experiment([f"{group}={option}", partner.group(1)]))
            try:
                validate(paired)
            except UsageError as still:
                assert str(still).startswith("data."), still  # only the user's file path is left to give
    if skipped:
        pytest.skip("; ".join(skipped))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_validates_and_builds(experiment):
    from almond_cli.training.build import build_model

    # experiment=mixed fits the user's table and formula: it validates once they are given (validate reads no file)
    user_data = ["data.path=table.csv", "data.formula='y ~ x + (1|g)'"] if experiment == "mixed" else []
    cfg = compose_config([f"experiment={experiment}", *user_data])
    validate(cfg)
    assert cfg.experiment_name == experiment
    if cfg.data.name == "normal_means":
        from almond_cli.tasks.registry import build_dataset

        dataset = build_dataset(cfg.data, 0)
        model = build_model(cfg, dataset)
        assert model.decoder.latent_dim == cfg.latent_dim


def test_mixture_experiment_pins_the_papers_sizes():
    cfg = compose_config(["experiment=mnn_mixture"])
    assert list(cfg.decoder.hidden_sizes) == [50, 100, 50] and cfg.schedule.vae_draws == 100
    assert cfg.data.prior.value == "mixture"


@pytest.mark.parametrize("experiment", ["mnn_exponential", "mnn_normal", "mnn_mixture"])
def test_paper_experiments_start_as_the_reference_implementation(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.encoder.init == "xavier_uniform" and cfg.decoder.init == "xavier_uniform"


@pytest.mark.parametrize(
    "override,key",
    [
        ("sampler.step_size=-0.1", "sampler.step_size"),
        ("sampler.num_chains=0", "sampler.num_chains"),
        ("sampler.burn_in=10", "sampler.burn_in"),
        ("sampler.num_steps=0", "sampler.num_steps"),
        ("schedule.vae_lr=0", "schedule.vae_lr"),
        ("decoder.activation=sigmoidish", "decoder.activation"),
        ("decoder.hidden_sizes=[10,0]", "decoder.hidden_sizes"),
        ("encoder.init=he_normal", "encoder.init"),
        ("device=tpu", "device"),
        ("evaluation.nll_prior_fraction=1.0", "evaluation.nll_prior_fraction"),
    ],
)
def test_validation_names_the_key(override, key):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert error.value.key == key and key in str(error.value)


@pytest.mark.parametrize("data", ["normal_means", "normal_means_normal", "file", "glmm", "glmm_file"])
def test_holdout_fraction_is_a_share_of_rows_below_one(data, tmp_path):
    """``data.holdout_fraction`` is a key of every non-image data option, 0 by default, and must lie in [0, 1)."""
    from almond_cli.commands.cli import drop_default_experiment

    (tmp_path / "m.csv").write_text("y,x,z\n1,0.1,0.2\n2,0.3,0.4\n")
    extra = {
        "file": [f"data.path={tmp_path / 'm.csv'}", "data.columns=[x]"],
        "glmm": ["likelihood=poisson_glmm"],
        "glmm_file": [
            "likelihood=poisson_glmm",
            f"data.path={tmp_path / 'm.csv'}",
            "data.response=y",
            "data.random_effects=[z]",
        ],
    }
    overrides = drop_default_experiment([f"data={data}", *extra.get(data, [])])
    assert compose_config(overrides).data.holdout_fraction == 0.0
    validate(compose_config(overrides + ["data.holdout_fraction=0.5"]))
    for fraction in ("1.0", "-0.1"):
        with pytest.raises(ConfigError) as error:
            validate(compose_config(overrides + [f"data.holdout_fraction={fraction}"]))
        assert error.value.key == "data.holdout_fraction" and "must be in [0, 1)" in str(error.value)


@pytest.mark.parametrize("experiment", [e for e in options("experiment") if e.startswith("mnn_")])
def test_a_paper_preset_applies_to_your_own_file(experiment, tmp_path):
    """``experiment=mnn_* data=file ...`` keeps the preset's networks, sampler and schedule and takes the file's
    data: an experiment pins its data only through its data option, which data=file replaces."""
    (tmp_path / "m.csv").write_text("x,se\n1.0,1.0\n2.0,0.5\n")
    published = compose_config([f"experiment={experiment}"])
    mine = compose_config(
        [
            f"experiment={experiment}",
            "data=file",
            f"data.path={tmp_path / 'm.csv'}",
            "data.columns=[x]",
            "data.sd_column=se",
            "likelihood=gaussian_hetero",
        ]
    )
    validate(mine)
    assert mine.data.name == "file" and "prior" not in mine.data
    for section in ("encoder", "decoder"):
        assert {k: v for k, v in mine[section].items()} == {k: v for k, v in published[section].items()}
    assert mine.sampler == published.sampler and mine.schedule == published.schedule
    assert mine.experiment_name == experiment
