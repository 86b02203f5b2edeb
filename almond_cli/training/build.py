"""Building a model from its config: likelihood, encoder and decoder instantiated from their config groups
(``_target_``), sized to the data; and a fitted model rebuilt from a checkpoint."""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from ..data.dataset import Dataset
from ..errors import UsageError
from ..model.model import LatentVariableModel


def build_model(cfg, dataset: Dataset) -> LatentVariableModel:
    """Instantiates likelihood, encoder and decoder from their config groups, sized to the data."""
    try:
        # Data-defined likelihood sizes (the GLMM's number of fixed effects) come from the data set.
        likelihood = instantiate(cfg.likelihood, **dataset.likelihood_args())
        encoder = instantiate(cfg.encoder, data_dim=dataset.data_dim, latent_dim=cfg.latent_dim)
        decoder = instantiate(cfg.decoder, latent_dim=cfg.latent_dim, output_dim=likelihood.param_dim(dataset.data_dim))
    except InstantiationException as error:
        # Hydra wraps a network's own UsageError (sizes that do not fit the data); show it as the user's error.
        if isinstance(error.__cause__, UsageError):
            raise error.__cause__ from None
        raise
    return LatentVariableModel(encoder, decoder, likelihood)


def load_model_state(cfg, dataset: Dataset, state: dict, device: torch.device) -> LatentVariableModel:
    """A model built as ``cfg`` says and loaded with ``state`` (a checkpoint's ``model``), in eval mode."""
    model = build_model(cfg, dataset)
    model.load_state_dict(state)
    return model.to(device).eval()
