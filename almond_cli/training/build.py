"""Building a model from its config: likelihood, encoder and decoder instantiated from their config groups
(``_target_``), sized to the data; and a fitted model rebuilt from a checkpoint."""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ..config import MODEL_GROUPS, untrusted_key
from ..data.dataset import Dataset
from ..errors import ConfigError, UsageError
from ..model.model import LatentVariableModel


def build_model(cfg, dataset: Dataset) -> LatentVariableModel:
    """Instantiates likelihood, encoder and decoder from their config groups, sized to the data; refuses
    (``ConfigError``) a group naming anything but almond's own classes (``config.untrusted_key``)."""
    # Defence in depth: a saved config was checked when it was read (``config.saved_config``); every option almond
    # ships names its own classes, so the allow-list holds for every config almond instantiates.
    groups = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in MODEL_GROUPS}
    found = untrusted_key(groups)
    if found:
        raise ConfigError(found[0], f"{found[1]}; almond instantiates only its own classes, with plain values")
    try:
        # Data-defined likelihood sizes (the GLMM's number of fixed effects) come from the data set.
        likelihood = instantiate(cfg.likelihood, **dataset.likelihood_args())
        latent_dim, extra = dataset.latent_dim_for(int(cfg.latent_dim)), dataset.network_args()
        encoder = instantiate(cfg.encoder, data_dim=dataset.data_dim, latent_dim=latent_dim, **extra)
        output_dim = likelihood.param_dim(dataset.data_dim)
        decoder = instantiate(cfg.decoder, latent_dim=latent_dim, output_dim=output_dim, **extra)
    except InstantiationException as error:
        # Hydra wraps a network's own UsageError (sizes that do not fit the data); show it as the user's error.
        if isinstance(error.__cause__, UsageError):
            raise error.__cause__ from None
        raise
    return dataset.model(encoder, decoder, likelihood)


def load_model_state(cfg, dataset: Dataset, state: dict, device: torch.device) -> LatentVariableModel:
    """A model built as ``cfg`` says and loaded with ``state`` (a checkpoint's ``model``), in eval mode."""
    model = build_model(cfg, dataset)
    model.load_state_dict(state)
    return model.to(device).eval()
