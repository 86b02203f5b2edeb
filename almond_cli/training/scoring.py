"""The one scoring path: ``summarise`` builds a run's summary (its ``summary.json``) from the trained models, for
``almond train`` at the end of a run and for ``almond evaluate`` reading a run back, so the two agree key for key.

Each model's row is its task's score (``Task.score``: the distances to a known prior, the training rows' ``train_nll``
and what else the data set knows); the VAE's row is scored on the model at the end of the VAE warm start, which
training keeps both as its scores (``vae_metrics`` in the checkpoint) and as ``vae.pt``.
"""

from __future__ import annotations

from ..config import sampler_settings
from ..langevin import tabulated
from ..langevin.targets import target_precision


def precision_record(model, cfg, device) -> dict:
    """How the Langevin steps run: ``sampler.precision`` as asked, the precision the decoder's products run in on
    ``device`` (``langevin``: fp32 where only autograd applies), and whether h is tabulated (``sampler.tabulate``;
    the table is built in float64 and read in float32, so ``langevin`` is fp32 then)."""
    settings = sampler_settings(cfg.sampler)  # a run saved before a key existed reads that key's old behaviour
    requested = settings.precision
    table = tabulated.wanted(model, settings.tabulate)
    return {
        "requested": requested,
        "langevin": "fp32" if table else target_precision(model, device, requested),
        "tabulated": table,
    }


def run_course(position) -> dict:
    """How long each phase ran and why it stopped, beside its seconds in ``summary.json``'s ``timing``:
    ``vae_epochs_run``, ``almond_epochs_run``, ``stopped_because`` ({phase: ``epochs`` (its fixed count), ``no_gain``
    (auto: no gain above its standard error over the checks' window) or ``cap`` (auto: ``schedule.auto.max_*``)}),
    ``still_improving`` (ALMOND's checks at its end; None where not judged) and ``vae_collapse`` (a collapsed VAE warm
    start found and repaired, ``training/collapse.py``; None if none was found)."""
    almond_epochs = position.epoch if position.phase.value != "vae" else 0
    return {
        "vae_epochs_run": position.vae_epochs_done if position.phase.value != "vae" else position.epoch,
        "almond_epochs_run": almond_epochs,
        "stopped_because": dict(position.stopped_because),
        "still_improving": position.still_improving,
        "vae_collapse": position.vae_collapse,
    }


def summarise(task, dataset, cfg, device, *, almond, vae, fitted_baselines: dict, position, precision: dict) -> dict:
    """A run's summary: ``vae``, ``almond`` and ``baselines`` scores, ``timing`` and ``precision``, in that order.

    Args:
        task: the ``Task`` scoring fits to ``dataset``.
        dataset: the data the run was trained on.
        cfg: the run's config (``cfg.evaluation`` sets the draws, importance samples and seed of the scores).
        device: where the models live.
        almond: the final model.
        vae: the model at the end of the VAE warm start, or its scores already computed by ``task.score`` (what
            training keeps); None leaves the ``vae`` row out.
        fitted_baselines: {name: model} of the baselines training fitted (``Task.trained_baselines``).
        position: the run's ``Position`` (its time in each phase).
        precision: ``precision_record`` of the run.

    Returns:
        The summary dict, as ``summary.json`` holds it.
    """
    summary = {}
    if vae is not None:
        summary["vae"] = vae if isinstance(vae, dict) else task.score(vae, dataset, cfg, device)
    summary["almond"] = task.score(almond, dataset, cfg, device)
    summary["baselines"] = task.baselines(almond, dataset, cfg, device, fitted_baselines)
    summary["timing"] = {
        "vae_seconds": position.vae_seconds,
        "almond_seconds": position.almond_seconds,
        **run_course(position),
    }
    summary["precision"] = precision
    return summary
