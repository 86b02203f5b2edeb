"""The fast experiments compose, validate, and differ from the paper's only in the documented settings."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from almond_cli.config import register_schemas, validate


def composed(experiment):
    register_schemas()
    with initialize_config_module(config_module="almond_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    validate(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def differences(left, right, prefix=""):
    keys = set(left) | set(right)
    found = {}
    for key in keys:
        a, b = left.get(key), right.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found.update(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            found[f"{prefix}{key}"] = (a, b)
    return found


@pytest.mark.parametrize(
    "paper,fast,changed",
    [
        (
            "mnn_exponential",
            "mnn_exponential_fast",
            {
                "sampler.num_chains",
                "sampler.burn_in",
                "schedule.vae_epochs",
                "schedule.almond_epochs",
                "schedule.warmup_epochs",
                "schedule.after_warmup",  # Adam on past the warm-up: reached only by auto or an extended run
                "encoder.init",
                "decoder.init",
            },
        ),
        (
            "mnn_mixture",
            "mnn_mixture_fast",
            {
                "sampler.num_chains",
                "sampler.burn_in",
                "schedule.vae_draws",
                "schedule.vae_epochs",
                "schedule.almond_epochs",
                "schedule.warmup_epochs",
                "schedule.after_warmup",  # Adam on past the warm-up: reached only by auto or an extended run
                "encoder.init",
                "decoder.init",
            },
        ),
    ],
)
def test_fast_experiment_changes_only_the_documented_settings(paper, fast, changed):
    found = differences(composed(paper), composed(fast))
    assert set(found) == changed | {"experiment_name"}
    assert composed(fast)["sampler"]["method"] == "ula"
