"""A collapsed VAE warm start, found and repaired before ALMOND starts from it.

Where the noise dominates the signal (batting averages: a signal sd of 0.03 beside standard errors of 0.02-0.16),
the VAE's KL term can win and its decoder comes out nearly constant: u = h(z) with an sd of 0.003. ALMOND then
starts from a point mass and must grow the spread tenfold by small steps: a fixed-epoch run ends far too narrow and
a slow one wastes its epochs. So at the start of ALMOND the spread of u = h(z), z ~ N(0, I) (``evaluation.num_draws``
draws from ``evaluation.seed``) is compared with the data's signal spread, which the task estimates
(``Task.signal_moments``: for Gaussian data the maximum-likelihood normal prior's sd, Fay-Herriot). Below
``COLLAPSE_RATIO`` of it, the decoder's output layer is rescaled so that u has the normal prior's mean and sd
(moment matching: h'(z) = m + s · (h(z) − mean h) / sd h, exact for the MLP and linear decoders, with the shape of
h kept), and a warning says so. ``schedule.collapse_ratio`` sets the share (0: no check; ``debug=tiny`` sets 0, as
its 20-epoch VAE is always too narrow and its runs test other things). The VAE's own scores (summary.json ``vae``, ``vae.pt``) stay those of the VAE as
trained. No random stream of training is used, so a run without a collapse is unchanged, bitwise.
"""

from __future__ import annotations

import logging

import torch

from ..model.networks import scale_decoder_output
from ..tasks.metrics import latent_draws

log = logging.getLogger("almond")

# The default of schedule.collapse_ratio: the spread of h(z) below which the warm start counts as collapsed, as a
# share of the data's signal sd. A VAE
# under-disperses its prior where noise dominates, by a factor near 2 in our runs; 0.25 leaves that alone and catches
# the collapse that motivated the check (0.003 / 0.03 = 0.1).
COLLAPSE_RATIO = 0.25


def is_collapsed(u_sd: torch.Tensor, signal_sd: torch.Tensor, ratio: float = COLLAPSE_RATIO) -> bool:
    """Whether any coordinate of u = h(z) is spread less than ``ratio`` times the signal's (both (P,)), where the
    signal has a spread at all."""
    return bool(((signal_sd > 0) & (u_sd < ratio * signal_sd)).any())


def repair_collapsed_warm_start(model, task, dataset, cfg, device) -> dict | None:
    """Checks the VAE warm start (module docstring) and rescales a collapsed decoder's output to the signal's
    moments; returns what it found ({"u_sd", "signal_sd", "repaired"}), or None where nothing was collapsed, the
    task knows no signal spread or ``schedule.collapse_ratio`` is 0 (a run saved before the key: no check)."""
    ratio = float(cfg.schedule.get("collapse_ratio", 0.0)) if "schedule" in cfg else COLLAPSE_RATIO
    if ratio <= 0:
        return None
    moments = task.signal_moments(model, dataset)
    if moments is None:
        return None
    signal_mean, signal_sd = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in moments)
    draws = latent_draws(model, cfg, device).double()  # (num_draws, P)
    if draws.shape[1] != signal_sd.numel():
        return None
    u_mean, u_sd = draws.mean(0), draws.std(0)
    if not is_collapsed(u_sd, signal_sd, ratio):
        return None
    scale = torch.where(signal_sd > 0, signal_sd / u_sd.clamp_min(1e-12), torch.ones_like(u_sd))
    repaired = scale_decoder_output(model.decoder, scale, signal_mean - scale * u_mean)
    found = {"u_sd": u_sd.tolist(), "signal_sd": signal_sd.tolist(), "repaired": repaired}
    action = (
        "ALMOND starts from the VAE's decoder rescaled to the maximum-likelihood normal prior's mean and sd"
        if repaired
        else "this decoder cannot be rescaled, so ALMOND starts from it as it is: expect it to need many epochs"
    )
    log.warning(
        "the VAE warm start collapsed: its prior's sd %s is below %.2f of the data's signal sd %s (the "
        "maximum-likelihood normal prior's); %s",
        ", ".join(f"{v:.4g}" for v in u_sd.tolist()),
        ratio,
        ", ".join(f"{v:.4g}" for v in signal_sd.tolist()),
        action,
    )
    return found
