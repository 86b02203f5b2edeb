"""The sampler's settings as one object, and the one function that builds a batch's Langevin target from them.

``SamplerSettings`` holds what ``sampler`` (the ``sampler`` config group) decides: the step-size schedule's inputs,
the steps per update and their burn-in, the chains per data point, the transition (ULA or MALA), the number format
of the decoder's products (``precision``) and the tabulated decoder (``tabulate``, ``table_nodes``). Its field
defaults are the one place the sampler's defaults live: the config schema takes them from here, and a run saved
before a key existed reads the default back (``config.sampler_settings`` builds the object from a run's config;
this package knows nothing of Hydra).

``build_target`` is the target the chains of a batch move under, in training (``phases.almond_update``) and in
``almond sample`` alike: the tabulated decoder where ``tabulate`` asks for it, with its grid around the chains' range
widened for the steps about to run, else ``targets.target_for`` (the fused MLP target in ``precision`` where the
model allows it, else autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from . import tabulated
from .targets import Target, target_for


@dataclass(frozen=True)
class SamplerSettings:
    """The Langevin sampler's settings (the ``sampler`` config group).

    The defaults of ``method``, ``precision``, ``tabulate`` and ``table_nodes`` are the behaviour of runs saved
    before those keys existed (ULA, float32, no table); new runs get ``configs/sampler/langevin.yaml``'s values.

    Attributes:
        step_size: s > 0, the Langevin step size of the first ALMOND epoch (``schedules.langevin_step_size``).
        step_size_decay: ``"inv_sqrt"`` or ``"constant"``.
        min_step_size_fraction: the decayed step size's floor, as a fraction of ``step_size``.
        num_steps: K, Langevin steps per parameter update.
        burn_in: the first ``burn_in`` of the K states are discarded (0 <= burn_in < K).
        num_chains: C, chains per data point.
        method: ``"ula"`` or ``"mala"`` (``sampler.run``).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (``precision.py``).
        tabulate: ``"off"``, ``"on"`` or ``"auto"`` (``tabulated.py``).
        table_nodes: G, the table's grid nodes.
    """

    step_size: float = 0.01
    step_size_decay: str = "inv_sqrt"
    min_step_size_fraction: float = 0.1
    num_steps: int = 10
    burn_in: int = 9
    num_chains: int = 100
    method: str = "ula"
    precision: str = "fp32"
    tabulate: str = "off"
    table_nodes: int = 2049


def build_target(
    model,
    x: Tensor,
    start: Tensor,
    settings: SamplerSettings,
    step_size: float,
    num_steps: int,
    units: Tensor | None = None,
) -> Target:
    """The Langevin target of ``model`` on the batch ``x`` (R, D) for chains starting at ``start`` (B, C, d) that
    will run ``num_steps`` steps of size ``step_size`` under it; ``units`` (R,) maps each row to its unit 0..B-1
    (None: row i is unit i, R = B).

    With ``settings.tabulate`` asking for a table (``tabulated.wanted``), a ``tabulated.TabulatedTarget`` at
    ``settings.table_nodes`` nodes over ``start``'s range widened by where ``num_steps`` steps can take the chains
    (``TabulatedTarget.around``; a chain that leaves it is evaluated exactly): build a new one for the next
    ``num_steps``. Otherwise ``targets.target_for(model, x, settings.precision)``, valid for any number of steps.
    A mixed model whose laws are smooth MLPs of one random term each (``tabulated.laws_apply``) has them read from
    tables over the same range (``tabulated.TabulatedLaws``) unless ``settings.tabulate`` is ``off``.
    Call it with the model's parameters frozen (``model.frozen()``).
    """
    if settings.tabulate != "off" and tabulated.laws_apply(model):
        laws = tabulated.TabulatedLaws.around(model.decoder, start, step_size, num_steps, settings.table_nodes)
        return target_for(model, x, settings.precision, units, laws)
    if tabulated.wanted(model, settings.tabulate):
        return tabulated.TabulatedTarget.around(
            model, x, start, step_size, num_steps, settings.table_nodes, units=units
        )
    return target_for(model, x, settings.precision, units)
