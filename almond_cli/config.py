"""Typed config schemas (registered in Hydra's ConfigStore) and the range checks types cannot express.

The YAML options in ``configs/`` extend these schemas, so a wrong type or an unknown key fails when the
config is composed; ``validate`` then checks ranges and cross-field rules before anything is built.
Validation is pure: it builds no objects.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# The data options' schemas live with their option (``tasks/registry.py``); the names stay importable from here.
from .data.files import FileDataConfig  # noqa: F401
from .data.glmm import GLMMDataConfig, GLMMFileDataConfig  # noqa: F401
from .data.mnist import MnistDataConfig  # noqa: F401
from .data.normal_means import NormalMeansDataConfig, PriorName  # noqa: F401
from .errors import (
    ConfigError,  # noqa: F401  (importable from here, as before)
    UsageError,
)
from .errors import require as _require
from .langevin.precision import PRECISIONS
from .langevin.sampler import METHODS as SAMPLER_METHODS
from .langevin.settings import SamplerSettings
from .langevin.tabulated import TABULATE_MODES
from .model.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    Gaussian,
    NegativeBinomial,
    PoissonGLMM,
    likelihood_class,
    target_of,
)
from .model.mixed import MixedLinearDecoder, MixedMLPDecoder, MixedTableEncoder
from .model.networks import ACTIVATIONS, INITIALISATIONS, LinearDecoder
from .tasks.registry import register_data_schemas, validate_data


@dataclass
class ConvNetworkConfig:
    _target_: str = MISSING
    channels: List[int] = field(default_factory=lambda: [64, 64, 64])
    kernel_size: int = 4
    stride: int = 2
    dense_units: int = 1024
    batch_norm: bool = True
    activation: str = "relu"
    image_shape: Optional[List[int]] = None


@dataclass
class BernoulliLikelihoodConfig:
    _target_: str = target_of(Bernoulli)


@dataclass
class LinearNetworkConfig:
    _target_: str = target_of(LinearDecoder)


@dataclass
class PoissonGLMMLikelihoodConfig:
    _target_: str = target_of(PoissonGLMM)
    max_linear_predictor: float = 30.0


@dataclass
class MLPNetworkConfig:
    _target_: str = MISSING
    hidden_sizes: List[int] = field(default_factory=lambda: [10])
    activation: str = "softplus"
    init: str = "pytorch"


@dataclass
class GaussianLikelihoodConfig:
    _target_: str = target_of(Gaussian)
    sigma: float = 1.0


@dataclass
class NegativeBinomialLikelihoodConfig:
    _target_: str = target_of(NegativeBinomial)
    dispersion: float = 1.0


@dataclass
class MixedTableEncoderConfig:
    _target_: str = target_of(MixedTableEncoder)
    init_log_var: float = -2.0


@dataclass
class MixedMLPDecoderConfig:
    _target_: str = target_of(MixedMLPDecoder)
    hidden_sizes: List[int] = field(default_factory=lambda: [32, 32])
    activation: str = "tanh"
    init: str = "pytorch"
    init_scale: float = 0.5


@dataclass
class MixedLinearDecoderConfig:
    _target_: str = target_of(MixedLinearDecoder)
    init_scale: float = 0.5


@dataclass
class TargetOnlyLikelihoodConfig:
    """A likelihood with no settings whose YAML names its class (poisson, gaussian_hetero); bernoulli, with no
    settings either, has its own schema (``BernoulliLikelihoodConfig``) whose default names its class."""

    _target_: str = MISSING


@dataclass
class SamplerConfig:
    """The ``sampler`` group; its defaults are ``SamplerSettings``'s (one place)."""

    step_size: float = SamplerSettings.step_size
    step_size_decay: str = SamplerSettings.step_size_decay
    min_step_size_fraction: float = SamplerSettings.min_step_size_fraction
    num_steps: int = SamplerSettings.num_steps
    burn_in: int = SamplerSettings.burn_in
    num_chains: int = SamplerSettings.num_chains
    method: str = SamplerSettings.method
    precision: str = SamplerSettings.precision
    tabulate: str = SamplerSettings.tabulate
    table_nodes: int = SamplerSettings.table_nodes


# How each sampler key is read from a config: YAML's bare on/off are booleans, so tabulate is read as text.
_SAMPLER_TYPES = {
    "step_size": float,
    "step_size_decay": str,
    "min_step_size_fraction": float,
    "num_steps": int,
    "burn_in": int,
    "num_chains": int,
    "method": str,
    "precision": str,
    "tabulate": str,
    "table_nodes": int,
}


def sampler_settings(sampler_cfg) -> SamplerSettings:
    """The ``SamplerSettings`` of a run's ``sampler`` config. A key the config lacks (a run saved before the key
    existed: ``method``, ``precision``, ``tabulate``, ``table_nodes``) takes ``SamplerSettings``'s default, which is
    how such a run behaved (ULA, float32, no table)."""
    values = {}
    for setting in fields(SamplerSettings):
        value = sampler_cfg.get(setting.name, setting.default)
        values[setting.name] = value if value is None else _SAMPLER_TYPES[setting.name](value)
    return SamplerSettings(**values)


AFTER_WARMUP = ("sgd", "adam")
"""What follows the ALMOND warm-up: the paper's SGD, or Adam at a decaying rate (mixed models: parameters whose
curvatures differ by orders of magnitude, where one SGD rate is too small for some and too large for others)."""


AUTO = "auto"
"""``schedule.vae_epochs`` / ``schedule.almond_epochs`` = auto: the phase runs until its held-out log-likelihood stops
improving (``training/stopping.py``), up to ``schedule.auto.max_*_epochs``."""


@dataclass
class AutoScheduleConfig:
    """``schedule.auto``: when a phase whose epoch count is ``auto`` is done (``training/stopping.py``). Every
    ``every`` epochs the held-out rows' log-likelihood (the training rows' if none are held out) is estimated with
    ``nll_samples`` importance draws per row from ``evaluation.seed`` (the same draws at every check, so successive
    checks are paired); the phase stops once ``window`` checks in a row have not beaten the best so far by more than
    the standard error of the paired gain, or at ``max_<phase>_epochs``; the ALMOND phase first halves its learning
    rate at ``halvings`` such plateaus. Fixed-epoch ALMOND runs make the same checks
    over their last ``window`` x ``every`` epochs to say whether they were still improving at the end."""

    every: int = 10
    window: int = 5
    max_vae_epochs: int = 1000
    max_almond_epochs: int = 2000
    nll_samples: int = 100
    halvings: int = 2


@dataclass
class ScheduleConfig:
    batch_size: Optional[int] = None
    vae_epochs: Any = 1000  # a whole number >= 0, or "auto" (validate checks it: OmegaConf 2.3 has no int | str)
    vae_lr: float = 0.01
    vae_draws: int = 10
    almond_epochs: Any = 1000  # a whole number >= 0, or "auto"
    warmup_epochs: int = 100
    adam_lr: float = 0.01
    sgd_lr: float = 0.01
    sgd_momentum: float = 0.1
    weight_decay: float = 0.001
    after_warmup: str = "sgd"
    average_last: float = 0.0
    collapse_ratio: float = 0.0  # paper.yaml sets 0.25; a run saved before the key starts ALMOND as it did
    auto: AutoScheduleConfig = field(default_factory=AutoScheduleConfig)


@dataclass
class CheckpointConfig:
    every_epochs: int = 100
    every_minutes: float = 10.0
    keep: int = 1


@dataclass
class EvaluationConfig:
    num_draws: int = 10_000
    seed: int = 12345
    nll_samples: int = 1000
    nll_images: Optional[int] = None
    nll_chunk: int = 4096
    nll_prior_fraction: float = 0.0  # train.yaml sets 0.1; a run saved before the key existed is scored as it was


@dataclass
class TensorBoardLoggerConfig:
    name: str = "tensorboard"
    subdir: str = "tensorboard"
    flush_seconds: float = 30.0
    figures: bool = True


@dataclass
class DiagnosticsConfig:
    rhat_every_epochs: int = 10
    rhat_points: int = 64
    trajectory_epochs: int = 50


@dataclass
class TrainConfig:
    data: Any = MISSING
    likelihood: Any = MISSING
    encoder: Any = MISSING
    decoder: Any = MISSING
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    logger: Any = None
    experiment_name: str = "custom"
    latent_dim: int = 1
    seed: int = 1
    device: str = "auto"
    threads: Optional[int] = None
    progress: str = "auto"
    resume: Optional[str] = None
    warm_start: Optional[str] = None


# The Hydra config groups of configs/ (a ``key=option`` override of one of these picks a file, not a value).
CONFIG_GROUPS = frozenset(
    {
        "data",
        "likelihood",
        "encoder",
        "decoder",
        "sampler",
        "schedule",
        "experiment",
        "debug",
        "hparams_search",
        "logger",
    }
)
STEP_SIZE_DECAYS = ("inv_sqrt", "constant")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS_MODES = ("auto", "rich", "plain", "quiet", "silent")


def register_schemas() -> None:
    """Stores the schemas under the names the YAML options list in their defaults."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    register_data_schemas(store)
    store.store(group="encoder", name="mlp_schema", node=MLPNetworkConfig)
    store.store(group="decoder", name="mlp_schema", node=MLPNetworkConfig)
    store.store(group="decoder", name="linear_schema", node=LinearNetworkConfig)
    store.store(group="likelihood", name="poisson_glmm_schema", node=PoissonGLMMLikelihoodConfig)
    store.store(group="likelihood", name="gaussian_schema", node=GaussianLikelihoodConfig)
    store.store(group="likelihood", name="target_only_schema", node=TargetOnlyLikelihoodConfig)
    store.store(group="likelihood", name="negative_binomial_schema", node=NegativeBinomialLikelihoodConfig)
    store.store(group="encoder", name="conv_schema", node=ConvNetworkConfig)
    store.store(group="encoder", name="mixed_table_schema", node=MixedTableEncoderConfig)
    store.store(group="decoder", name="mixed_mlp_schema", node=MixedMLPDecoderConfig)
    store.store(group="decoder", name="mixed_linear_schema", node=MixedLinearDecoderConfig)
    store.store(group="decoder", name="conv_schema", node=ConvNetworkConfig)
    store.store(group="likelihood", name="bernoulli_schema", node=BernoulliLikelihoodConfig)
    store.store(group="sampler", name="langevin_schema", node=SamplerConfig)
    store.store(group="schedule", name="schedule_schema", node=ScheduleConfig)
    store.store(group="logger", name="tensorboard_schema", node=TensorBoardLoggerConfig)


def with_current_defaults(saved):
    """A config saved by an earlier almond (a checkpoint's), with today's defaults for the sections and keys it
    predates (``diagnostics``, say), so resuming such a run works. A new key's default keeps the old behaviour;
    keys inside the model groups (``encoder.init``) are left out and take their classes' defaults, which do too.
    A key that no longer exists is kept as saved; a value the schema can no longer hold leaves the whole config
    as saved."""
    # A plain copy of the defaults (saved configs are plain too): no struct flags to refuse a retired key.
    defaults = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(TrainConfig), enum_to_str=True))
    try:
        return OmegaConf.merge(defaults, saved)
    except OmegaConfBaseException:
        return saved


# Where classes named by ``_target_`` lived before almond 0.2 moved them into subpackages: a run saved by an
# earlier almond names them so in its checkpoint and ``.hydra/config.yaml``.
MOVED_TARGETS = {
    "almond_cli.likelihoods.": "almond_cli.model.likelihoods.",
    "almond_cli.networks.": "almond_cli.model.networks.",
    "almond_cli.conv_networks.": "almond_cli.model.conv_networks.",
}


def current_target(target: str) -> str:
    """``target`` with a module path of an earlier almond replaced by today's (``MOVED_TARGETS``)."""
    for old, new in MOVED_TARGETS.items():
        if target.startswith(old):
            return new + target[len(old) :]
    return target


# The config groups whose ``_target_`` almond instantiates (``training/build.py``).
MODEL_GROUPS = ("likelihood", "encoder", "decoder")
# The keys Hydra's ``instantiate`` acts on: in a config almond instantiates, only ``_target_`` at the top of a
# model group, naming one of ``allowed_targets()``.
_INSTANTIATE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def allowed_targets() -> frozenset[str]:
    """The import paths a ``_target_`` may name: the likelihoods, encoders and decoders almond ships. An allow-list,
    not a blocklist: a config is data, and naming any other callable (``torch.load``, ``os.system``) is refused."""
    from .model.conv_networks import ConvDecoder, ConvEncoder
    from .model.networks import MLPDecoder, MLPEncoder

    networks = (
        MLPEncoder,
        MLPDecoder,
        LinearDecoder,
        ConvEncoder,
        ConvDecoder,
        MixedTableEncoder,
        MixedMLPDecoder,
        MixedLinearDecoder,
    )
    return frozenset(target_of(cls) for cls in (*LIKELIHOODS.values(), *networks))


def untrusted_key(cfg) -> tuple[str, str] | None:
    """The first key of ``cfg`` (a config or plain container) that would make ``instantiate`` run anything but
    almond's own classes, as (dotted key, what it holds); None if there is none. Refused: a ``_target_`` outside
    ``allowed_targets()`` (an earlier almond's path, ``MOVED_TARGETS``, counts as today's), any instantiate key
    (``_target_``, ``_args_``, ...) anywhere but a model group's own ``_target_``, a mapping inside a model group's
    arguments (none of almond's takes one), and an interpolation (``${...}``; a saved config is saved resolved, and
    a resolver such as ``oc.create`` could build a ``_target_`` after this check)."""
    container = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    allowed = allowed_targets()

    def walk(node, path: str, model_group: bool):
        if isinstance(node, dict):
            # A model group's own _target_ first: the class it names says most about a crafted group.
            for key, value in sorted(node.items(), key=lambda item: item[0] != "_target_"):
                where = f"{path}.{key}" if path else str(key)
                top_of_group = not path and key in MODEL_GROUPS
                if key == "_target_" and model_group and path in MODEL_GROUPS:
                    if not isinstance(value, str) or current_target(value) not in allowed:
                        return where, f"names {value!r}, which is not one of almond's classes"
                    continue
                if key == "_target_" and path:  # name the mapping that holds it: likelihood.sigma
                    return path, f"holds a _target_ ({value})"
                if key in _INSTANTIATE_KEYS:
                    return where, "is one of Hydra's instantiate keys, which almond's configs never hold there"
                if model_group and isinstance(value, dict):
                    target = value.get("_target_")
                    if isinstance(target, str):
                        return where, f"holds a _target_ ({target})"
                    return where, "holds a mapping where a number, string or list is expected"
                found = walk(value, where, model_group or top_of_group)
                if found:
                    return found
        elif isinstance(node, list):
            for index, value in enumerate(node):
                found = walk(value, f"{path}[{index}]", model_group)
                if found:
                    return found
                if model_group and isinstance(value, dict):
                    return f"{path}[{index}]", "holds a mapping where a number or string is expected"
        elif isinstance(node, str) and "${" in node:
            return path, f"holds an interpolation ({node[:80]})"
        return None

    return walk(container, "", False)


def _model_group_schemas() -> dict[str, tuple]:
    """The schemas each model group's options extend (``register_schemas``)."""
    likelihoods = (GaussianLikelihoodConfig, NegativeBinomialLikelihoodConfig, PoissonGLMMLikelihoodConfig)
    return {
        "likelihood": likelihoods,
        "encoder": (MLPNetworkConfig, ConvNetworkConfig, MixedTableEncoderConfig),
        "decoder": (
            MLPNetworkConfig,
            ConvNetworkConfig,
            LinearNetworkConfig,
            MixedMLPDecoderConfig,
            MixedLinearDecoderConfig,
        ),
    }


def mistyped_key(cfg) -> tuple[str, str] | None:
    """The first argument of a model group whose value its schema cannot hold (``likelihood.sigma: abc``), as
    (dotted key, what it holds); None if there is none. A key no schema of the group has is left to the class."""
    for group, schemas in _model_group_schemas().items():
        node = cfg.get(group)
        if not OmegaConf.is_dict(node):
            continue
        for key, value in OmegaConf.to_container(node, resolve=False).items():
            schema = next((s for s in schemas if key != "_target_" and key in {f.name for f in fields(s)}), None)
            if schema is None:
                continue
            try:
                OmegaConf.merge(OmegaConf.structured(schema), {key: value})
            except OmegaConfBaseException:
                return f"{group}.{key}", f"holds {value!r}, which its schema ({schema.__name__}) does not accept"
    return None


class SavedConfigRefused(UsageError):
    """A saved config (a checkpoint's ``config_yaml``) that names something almond would not instantiate."""


def check_saved_config(cfg, command: str | None) -> None:
    """Raises ``SavedConfigRefused`` naming the key if ``untrusted_key(cfg)`` finds one."""
    found = untrusted_key(cfg) or mistyped_key(cfg)
    if found:
        key, what = found
        prefix = f"{command}: " if command else ""
        raise SavedConfigRefused(
            f"{prefix}the run's saved config is refused: {key} {what}; almond instantiates only its own classes "
            f"({', '.join(sorted(name.rsplit('.', 1)[1] for name in allowed_targets()))}) with plain values, so a "
            "checkpoint or run folder can never run code. Was this file edited or made elsewhere?"
        )


def saved_config(config_yaml: str, command: str | None = None):
    """The config a checkpoint saved (its ``config_yaml``), completed by ``with_current_defaults`` and with its
    ``_target_`` paths brought up to date: what resume, ``almond evaluate`` and ``almond sample`` read a run's
    settings from. The one reader of a saved config: it is data, and ``check_saved_config`` refuses (naming
    ``command`` and the key) one that would make ``instantiate`` run anything but almond's own classes."""
    raw = OmegaConf.create(config_yaml)
    check_saved_config(raw, command)
    cfg = with_current_defaults(raw)
    check_saved_config(cfg, command)
    for group in ("likelihood", "encoder", "decoder"):
        node = cfg.get(group)
        if node is not None and isinstance(node.get("_target_"), str):
            node._target_ = current_target(node._target_)
    return cfg


def composition_message(error: Exception) -> str:
    """Hydra's composition error in one line: the override, the reason, the valid options (schemas hidden)."""
    text = str(error).split("Config search path")[0]
    text = re.sub(r"To append to your config use \S+", "", text)  # almond refuses unknown keys anyway
    cause = error.__cause__
    if cause is not None:
        text += ": " + str(cause).splitlines()[0]
    words = [word for word in text.split() if not word.endswith("_schema")]
    return " ".join(words).rstrip(" .:") + "."


def override_parse_message(error: Exception, overrides: list[str]) -> str:
    """Hydra's parse error of the command-line overrides, with the fix for its commonest cause: an unquoted value
    with characters outside ASCII (an accented file name), which Hydra's override grammar does not accept."""
    text = f"cannot parse the overrides: {error}".rstrip(". ")
    unquoted = [o for o in overrides if not o.isascii() and "'" not in o and '"' not in o]
    if unquoted:
        key, _, value = unquoted[0].partition("=")
        text += (
            f". Hydra reads a value with characters outside ASCII only when it is quoted: write "
            f"{key}=\"'{value}'\" (the shell's double quotes keep the single quotes for Hydra)"
        )
    return text + "."


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def is_epoch_count(value) -> bool:
    """Whether ``value`` is what ``schedule.vae_epochs`` / ``schedule.almond_epochs`` may hold: ``auto`` or a whole
    number >= 0 (not a bool, not 2.5)."""
    if value == AUTO:
        return True
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate(cfg) -> None:
    """Checks ranges and cross-field rules of a composed config; raises ``ConfigError`` naming the key."""
    sampler, schedule = cfg.sampler, cfg.schedule
    _require(sampler.step_size > 0, "sampler.step_size", f"must be > 0, got {sampler.step_size}; the paper uses 0.01")
    _require(
        sampler.step_size_decay in STEP_SIZE_DECAYS,
        "sampler.step_size_decay",
        f"must be one of {list(STEP_SIZE_DECAYS)}, got {sampler.step_size_decay!r}",
    )
    _require(
        0 < sampler.min_step_size_fraction <= 1,
        "sampler.min_step_size_fraction",
        f"must be in (0, 1], got {sampler.min_step_size_fraction}",
    )
    _require(sampler.num_steps >= 1, "sampler.num_steps", f"must be >= 1, got {sampler.num_steps}")
    _require(
        0 <= sampler.burn_in < sampler.num_steps,
        "sampler.burn_in",
        f"must satisfy 0 <= burn_in < num_steps ({sampler.num_steps}), got {sampler.burn_in}; "
        "at least one Langevin state must be kept",
    )
    evaluation = cfg.evaluation  # the marginal-likelihood estimator every task scores train_nll with
    _require(evaluation.nll_samples >= 1, "evaluation.nll_samples", f"must be >= 1, got {evaluation.nll_samples}")
    _require(evaluation.nll_chunk >= 1, "evaluation.nll_chunk", f"must be >= 1, got {evaluation.nll_chunk}")
    prior_fraction = evaluation.get("nll_prior_fraction", 0.0)
    _require(
        0 <= prior_fraction < 1,
        "evaluation.nll_prior_fraction",
        f"must be in [0, 1) (the prior's share of the importance proposal), got {prior_fraction}",
    )
    settings = sampler_settings(sampler)  # a run saved before a key existed reads that key's old behaviour
    method, precision, tabulate = settings.method, settings.precision, settings.tabulate
    _require(method in SAMPLER_METHODS, "sampler.method", f"must be one of {list(SAMPLER_METHODS)}, got {method!r}")
    _require(precision in PRECISIONS, "sampler.precision", f"must be one of {list(PRECISIONS)}, got {precision!r}")
    _require(
        tabulate in TABULATE_MODES,
        "sampler.tabulate",
        f'must be one of {list(TABULATE_MODES)}, got {tabulate!r} (in YAML quote "on" and "off": bare, '
        f"they are booleans)",
    )
    _require(
        tabulate != "on" or cfg.latent_dim == 1,
        "sampler.tabulate",
        f"'on' needs latent_dim 1 (the table is over a one-dimensional z), got latent_dim {cfg.latent_dim}; "
        f"use 'auto' or 'off'",
    )
    likelihood = likelihood_class(str(cfg.likelihood.get("_target_", "")))
    closed_form = sorted(name for name, cls in LIKELIHOODS.items() if hasattr(cls, "value_and_grad_u"))
    _require(
        tabulate != "on" or likelihood is None or hasattr(likelihood, "value_and_grad_u"),
        "sampler.tabulate",
        f"'on' needs a likelihood with a closed-form gradient in u ({', '.join(closed_form)}); "
        f"likelihood={getattr(likelihood, 'name', '?')} has none: use 'auto' (it then samples exactly) or 'off'",
    )
    _require(settings.table_nodes >= 2, "sampler.table_nodes", f"must be >= 2, got {settings.table_nodes}")
    _require(sampler.num_chains >= 1, "sampler.num_chains", f"must be >= 1, got {sampler.num_chains}")
    for key in ("vae_epochs", "almond_epochs"):
        _require(
            is_epoch_count(schedule[key]),
            f"schedule.{key}",
            f"must be a whole number of epochs >= 0 or auto (train until the held-out log-likelihood stops improving, "
            f"schedule.auto), got {schedule[key]!r}",
        )
    _require(
        0.0 <= float(schedule.get("collapse_ratio", 0.0)) < 1.0,
        "schedule.collapse_ratio",
        f"must be in [0, 1) (0: no check of the warm start's spread), got {schedule.get('collapse_ratio')}",
    )
    auto = schedule.get("auto") or AutoScheduleConfig()  # a run saved before the key: the defaults
    for key in ("every", "window", "max_vae_epochs", "max_almond_epochs", "nll_samples"):
        value = getattr(auto, key)
        _require(isinstance(value, int) and value >= 1, f"schedule.auto.{key}", f"must be >= 1, got {value!r}")
    halvings = getattr(auto, "halvings", AutoScheduleConfig.halvings)
    _require(
        isinstance(halvings, int) and halvings >= 0,
        "schedule.auto.halvings",
        f"must be a whole number >= 0 (0: the ALMOND phase stops at its first plateau), got {halvings!r}",
    )
    _require(schedule.warmup_epochs >= 0, "schedule.warmup_epochs", f"must be >= 0, got {schedule.warmup_epochs}")
    _require(schedule.vae_draws >= 1, "schedule.vae_draws", f"must be >= 1, got {schedule.vae_draws}")
    for key in ("vae_lr", "adam_lr", "sgd_lr"):
        _require(schedule[key] > 0, f"schedule.{key}", f"must be > 0, got {schedule[key]}")
    _require(0 <= schedule.sgd_momentum < 1, "schedule.sgd_momentum", f"must be in [0, 1), got {schedule.sgd_momentum}")
    _require(schedule.weight_decay >= 0, "schedule.weight_decay", f"must be >= 0, got {schedule.weight_decay}")
    _require(
        0.0 <= float(schedule.get("average_last", 0.0)) < 1.0,
        "schedule.average_last",
        f"must be in [0, 1) (the share of ALMOND epochs whose parameters are averaged), got "
        f"{schedule.get('average_last')}",
    )
    _require(
        schedule.get("after_warmup", "sgd") in AFTER_WARMUP,
        "schedule.after_warmup",
        f"must be one of {', '.join(AFTER_WARMUP)}, got {schedule.get('after_warmup')}",
    )
    _require(
        schedule.batch_size is None or schedule.batch_size >= 1,
        "schedule.batch_size",
        f"must be >= 1 or null (full batch), got {schedule.batch_size}",
    )
    _require(cfg.latent_dim >= 1, "latent_dim", f"must be >= 1, got {cfg.latent_dim}")
    _require(
        cfg.device in DEVICES or cfg.device.startswith("cuda:"),
        "device",
        f"must be one of {list(DEVICES)} or cuda:N, got {cfg.device!r}",
    )
    _require(cfg.threads is None or cfg.threads >= 1, "threads", f"must be >= 1 or null, got {cfg.threads}")
    cores = usable_cores()
    _require(
        cfg.threads is None or cfg.threads <= cores,
        "threads",
        f"{cfg.threads} is more than the {cores} CPU cores this process may use; threads beyond the cores only wait "
        f"on each other. Set threads={cores} or fewer (or null for torch's default)",
    )
    _require(cfg.progress in PROGRESS_MODES, "progress", f"must be one of {list(PROGRESS_MODES)}, got {cfg.progress!r}")
    _require(cfg.evaluation.num_draws >= 100, "evaluation.num_draws", f"must be >= 100, got {cfg.evaluation.num_draws}")
    ckpt = cfg.checkpoint
    _require(ckpt.every_epochs >= 0, "checkpoint.every_epochs", f"must be >= 0 (0 = off), got {ckpt.every_epochs}")
    _require(ckpt.every_minutes >= 0, "checkpoint.every_minutes", f"must be >= 0 (0 = off), got {ckpt.every_minutes}")
    _require(ckpt.keep >= 0, "checkpoint.keep", f"must be >= 0, got {ckpt.keep}")
    diag = cfg.diagnostics
    _require(
        diag.rhat_every_epochs >= 0,
        "diagnostics.rhat_every_epochs",
        f"must be >= 0 (0 = off), got {diag.rhat_every_epochs}",
    )
    _require(
        diag.trajectory_epochs >= 4,
        "diagnostics.trajectory_epochs",
        f"must be >= 4 (split-R-hat halves each chain's trajectory), got {diag.trajectory_epochs}",
    )
    _require(diag.rhat_points >= 1, "diagnostics.rhat_points", f"must be >= 1, got {diag.rhat_points}")
    if cfg.logger is not None:
        _require(cfg.logger.flush_seconds > 0, "logger.flush_seconds", f"must be > 0, got {cfg.logger.flush_seconds}")
    for group in ("encoder", "decoder"):
        network = cfg[group]
        if "hidden_sizes" in network:
            _require(
                all(int(width) >= 1 for width in network.hidden_sizes),
                f"{group}.hidden_sizes",
                f"every width must be >= 1, got {list(network.hidden_sizes)}",
            )
        if "activation" in network:
            _require(
                network.activation in ACTIVATIONS,
                f"{group}.activation",
                f"must be one of {sorted(ACTIVATIONS)}, got {network.activation!r}",
            )
        if "init" in network:
            _require(
                network.init in INITIALISATIONS,
                f"{group}.init",
                f"must be one of {list(INITIALISATIONS)}, got {network.init!r}",
            )
        if "channels" in network:
            _require(
                len(network.channels) >= 1 and all(int(c) >= 1 for c in network.channels),
                f"{group}.channels",
                f"must list at least one filter count, each >= 1, got {list(network.channels)}",
            )
            _require(
                network.kernel_size >= 1 and network.stride >= 1,
                f"{group}.kernel_size",
                f"kernel_size and stride must be >= 1, got {network.kernel_size} and {network.stride}",
            )
            _require(network.dense_units >= 1, f"{group}.dense_units", f"must be >= 1, got {network.dense_units}")
    if "holdout_fraction" in cfg.data:  # the non-image data; images have held_out_split / held_out_fraction
        _require(
            0 <= cfg.data.holdout_fraction < 1,
            "data.holdout_fraction",
            f"must be in [0, 1) (0 trains on every row), got {cfg.data.holdout_fraction}",
        )
    validate_data(cfg)  # the data option's own rules and whether the likelihood reads its rows (tasks/registry.py)
    if "sigma" in cfg.likelihood:
        _require(cfg.likelihood.sigma > 0, "likelihood.sigma", f"must be > 0, got {cfg.likelihood.sigma}")
    if "dispersion" in cfg.likelihood:
        _require(
            cfg.likelihood.dispersion > 0,
            "likelihood.dispersion",
            f"must be > 0 (the negative binomial's starting r), got {cfg.likelihood.dispersion}",
        )
    if "max_linear_predictor" in cfg.likelihood:
        _require(
            cfg.likelihood.max_linear_predictor > 0,
            "likelihood.max_linear_predictor",
            f"must be > 0, got {cfg.likelihood.max_linear_predictor}",
        )
