"""A collapsed VAE warm start, found and repaired before ALMOND starts from it.

Where the noise dominates the signal (batting averages: a signal sd of 0.03 beside standard errors of 0.02-0.16),
the VAE's KL term can win and its decoder comes out nearly constant: u = h(z) with an sd of 0.003. ALMOND then
starts from a point mass and must grow the spread tenfold by small steps: a fixed-epoch run ends far too narrow and
a slow one wastes its epochs. So at the start of ALMOND the spread of u = h(z), z ~ N(0, I) (``evaluation.num_draws``
draws from ``evaluation.seed``) is compared with the data's signal spread, which the task estimates
(``Task.signal_moments``: for Gaussian data the maximum-likelihood normal prior's sd, Fay-Herriot). Below
``COLLAPSE_RATIO`` of it, ALMOND starts from that normal prior instead, and a warning says so: an MLP decoder is
restarted as it (``reset_to_normal_prior``: a fresh network fitted to the identity behind an output affine of the
prior's mean and sd); a linear decoder, or an MLP with fewer latent than output coordinates, has its output layer
rescaled to the prior's mean and sd (h'(z) = m + s · (h(z) − mean h) / sd h, the shape of h kept).
``schedule.collapse_ratio`` sets the share (0: no check; ``debug=tiny`` sets 0, as its 20-epoch VAE is always too
narrow and its runs test other things). The VAE's own scores (summary.json ``vae``, ``vae.pt``) stay those of the
VAE as trained. No random stream of training is used, so a run without a collapse is unchanged, bitwise.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..model.networks import MLPDecoder, scale_decoder_output
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


# The restarted network's fit of net(z) = z: Adam steps at a learning rate of 0.01, each on fresh draws of N(0, I)
# from a generator seeded by seed + RESTART_SEED_OFFSET. 300 steps bring the presets' [50, 100, 50] softplus network
# within 0.002-0.012 of z over |z| <= 2 and 0.01-0.05 over |z| <= 3 (seeds 1-3) in under a second: u within a few
# hundredths of a prior sd of the normal prior's. A tighter fit did worse in our runs: L-BFGS to 0.001 over |z| <= 3
# left a network that ALMOND moved slowly (batting averages, seed 2: stopped 0.16 nats per held-out row short of the
# NPMLE, against 0.005 from this fit).
RESTART_STEPS, RESTART_DRAWS, RESTART_LR, RESTART_SEED_OFFSET = 300, 1000, 0.01, 7919


def reset_to_normal_prior(decoder, mean: torch.Tensor, sd: torch.Tensor, seed: int) -> bool:
    """Restarts an ``MLPDecoder`` as the normal prior N(mean, sd²) per coordinate: its output affine is set to (mean,
    sd) and its network, freshly initialised, is fitted to net(z) = (z_1..z_P) (least squares over draws of
    N(0, I_d)). Returns False, changing nothing, for any other decoder or a latent smaller than the output.

    Why not rescale the collapsed network: a network whose output spread is a tenth of the data's, scaled up tenfold,
    turns every Adam step on its inner weights into a tenfold step on u, and the first ALMOND updates throw the prior
    far off (batting averages: a held-out −log p of +35 after 10 epochs, 250 epochs to recover). The restarted network
    works in standardised units, where Adam's learning rate is the size of step it is meant to be.

    Everything is drawn on the CPU from its own generator and forked global state: the training's random streams
    are untouched.
    """
    if not isinstance(decoder, MLPDecoder) or decoder.latent_dim < mean.numel():
        return False
    outputs = mean.numel()
    generator = torch.Generator().manual_seed(seed + RESTART_SEED_OFFSET)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + RESTART_SEED_OFFSET)
        fresh = copy.deepcopy(decoder.net).cpu().float()
        for layer in fresh.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    optimiser = torch.optim.Adam(fresh.parameters(), lr=RESTART_LR)
    with torch.enable_grad():
        for _ in range(RESTART_STEPS):
            z = torch.randn(RESTART_DRAWS, decoder.latent_dim, generator=generator)
            loss = (fresh(z) - z[:, :outputs]).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        for target, source in zip(decoder.net.parameters(), fresh.parameters()):
            target.copy_(source)
        decoder.output_shift.copy_(mean)
        decoder.output_scale.copy_(sd)
    return True


def repair_collapsed_warm_start(model, task, dataset, cfg, device) -> dict | None:
    """Checks the VAE warm start (module docstring) and starts a collapsed one over from the signal's normal prior
    (``reset_to_normal_prior``, else a rescale to its moments); returns what it found ({"u_sd", "signal_sd", "repaired"}), or None where nothing was collapsed, the
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
    if reset_to_normal_prior(model.decoder, signal_mean, signal_sd, int(cfg.get("seed", 0))):
        repaired, action = True, "ALMOND starts from the maximum-likelihood normal prior (the decoder restarted)"
    else:
        scale = torch.where(signal_sd > 0, signal_sd / u_sd.clamp_min(1e-12), torch.ones_like(u_sd))
        repaired = scale_decoder_output(model.decoder, scale, signal_mean - scale * u_mean)
        action = (
            "ALMOND starts from the VAE's decoder rescaled to the maximum-likelihood normal prior's mean and sd"
            if repaired
            else "this decoder cannot be rescaled, so ALMOND starts from it as it is: expect it to need many epochs"
        )
    found = {"u_sd": u_sd.tolist(), "signal_sd": signal_sd.tolist(), "repaired": repaired}
    log.warning(
        "the VAE warm start collapsed: its prior's sd %s is below %.2f of the data's signal sd %s (the "
        "maximum-likelihood normal prior's); %s",
        ", ".join(f"{v:.4g}" for v in u_sd.tolist()),
        ratio,
        ", ".join(f"{v:.4g}" for v in signal_sd.tolist()),
        action,
    )
    return found
