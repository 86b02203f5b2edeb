"""Optional extras: which config choices need which pip extra, checked before Hydra sees the overrides.

Without the plugin, Hydra's own message is a composition error about a missing config; almond says instead
which extra to install (``pip install -e .[sweep]`` or ``.[tensorboard]``).
"""

from __future__ import annotations

import importlib.util
import warnings

from ..errors import UsageError

# (override key, value or None for any value) -> (module that must import, extra that provides it)
REQUIREMENTS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "sweep"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "sweep"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "sweep"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
    ("hparams_search", None): ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
    ("logger", "tensorboard"): ("tensorboard", "tensorboard"),
}


class MissingExtraError(UsageError):
    """A config choice needs an optional extra that is not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_extras(overrides: list[str]) -> None:
    """Raises ``MissingExtraError`` naming the extra when an override picks an uninstalled plugin.

    Args:
        overrides: Hydra overrides as typed, e.g. ``["hydra/launcher=joblib", "seed=2"]``.
    """
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        key = key.lstrip("/")
        for (wanted_key, wanted_value), (module, extra) in REQUIREMENTS.items():
            if key != wanted_key or value in ("", "null") or (wanted_value is not None and value != wanted_value):
                continue
            if not _installed(module):
                raise MissingExtraError(
                    f"{key}={value} needs the optional extra '{extra}', which is not installed "
                    f"(no module {module}). Install it with: pip install 'almond[{extra}]' "
                    f"(from a checkout: pip install -e '.[{extra}]')."
                )


def quiet_plugin_warnings() -> None:
    """Silences Hydra's deprecation notice for our launcher YAMLs sharing a name with the plugin's schema.

    ``configs/hydra/launcher/submitit_*.yaml`` deliberately keep the plugin's names (the public
    ``hydra/launcher=submitit_slurm``) and are validated against its schema, which Hydra 1.3 still does
    but announces as deprecated on every run.
    """
    warnings.filterwarnings("ignore", message=r"[\s\S]*is validated against ConfigStore schema with the same name")
