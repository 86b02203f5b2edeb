"""almond sample what=posterior draws under the Langevin target training builds: ``settings.build_target`` with the
run's own sampler settings (tabulated, fused bf16 or fp32, ULA or MALA), not an autograd target of its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_almond

from almond_cli.commands import sample as sample_command
from almond_cli.commands.sample import posterior_draws
from almond_cli.config import sampler_settings
from almond_cli.langevin import sampler
from almond_cli.langevin.settings import SamplerSettings, build_target
from almond_cli.langevin.tabulated import TabulatedTarget
from almond_cli.langevin.targets import AutogradTarget, MLPTarget
from almond_cli.model.likelihoods import Gaussian, Poisson
from almond_cli.model.model import LatentVariableModel
from almond_cli.model.networks import MLPDecoder, MLPEncoder

NUM_CHAINS, NUM_DRAWS, THIN, BURN_IN, STEP = 3, 4, 5, 7, 0.02


def make_model(latent_dim: int, likelihood=None) -> LatentVariableModel:
    torch.manual_seed(0)
    model = LatentVariableModel(
        MLPEncoder(1, latent_dim, [5]), MLPDecoder(latent_dim, 1, [8, 6]), likelihood or Gaussian(0.8)
    )
    return model.eval()


def reference_draws(model, x, start, settings) -> torch.Tensor:
    """The draws written out from the pieces training uses: per segment (burn-in, then one per kept draw) the
    target ``build_target`` gives for the chains' current positions, ``sampler.run`` with the run's method, and
    u read as training's loss reads it (the table's interpolant, or the decoder)."""
    generator = torch.Generator().manual_seed(4)
    z, draws = start.clone(), []
    with model.frozen():
        for index, steps in enumerate([BURN_IN] + [THIN] * NUM_DRAWS):
            target = build_target(model, x, z, settings, STEP, steps)
            kept, _ = sampler.run(z, target, STEP, steps, steps - 1, generator, settings.method)
            z = kept[-1]
            if index:
                with torch.no_grad():
                    if isinstance(target, TabulatedTarget):
                        draws.append(target.interpolate(z.reshape(-1))[0].view(*z.shape[:2], -1))
                    else:
                        draws.append(model.decoder(z))
    return torch.cat(draws, dim=1).float()


CASES = {  # settings -> (latent_dim, likelihood, the target class training builds for them)
    "tabulated ula": (SamplerSettings(tabulate="on"), 1, None, TabulatedTarget),
    "tabulated mala": (SamplerSettings(tabulate="auto", method="mala"), 1, None, TabulatedTarget),
    "fused bf16": (SamplerSettings(tabulate="auto", precision="bf16"), 2, None, MLPTarget),
    "fused fp32 mala": (SamplerSettings(method="mala"), 2, None, MLPTarget),
    "autograd": (SamplerSettings(tabulate="auto", precision="bf16"), 1, Poisson(), AutogradTarget),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_posterior_draws_are_the_training_targets_chains_bit_for_bit(case, monkeypatch):
    settings, latent_dim, likelihood, kind = CASES[case]
    model = make_model(latent_dim, likelihood)
    x = torch.randn(6, 1) * 2 + (3 if likelihood is not None else 0)
    if likelihood is not None:
        x = x.round().clamp(min=0)
    start = torch.randn(6, NUM_CHAINS, latent_dim, generator=torch.Generator().manual_seed(1))
    seen = []
    original_run = sampler.run

    def recording_run(z, target, step_size, num_steps, burn_in, generator=None, method="ula"):
        seen.append((type(target), getattr(target, "precision", None), method))
        return original_run(z, target, step_size, num_steps, burn_in, generator, method)

    monkeypatch.setattr(sampler, "run", recording_run)
    draws = posterior_draws(
        model, x, NUM_CHAINS, NUM_DRAWS, THIN, BURN_IN, STEP, torch.Generator().manual_seed(4), start, settings=settings
    )
    monkeypatch.setattr(sampler, "run", original_run)
    assert len(seen) == 1 + NUM_DRAWS
    assert {entry[0] for entry in seen} == {kind} and {entry[2] for entry in seen} == {settings.method}
    if kind is MLPTarget:
        assert {entry[1] for entry in seen} == {settings.precision}
    assert draws.shape == (6, NUM_DRAWS * NUM_CHAINS, 1)
    assert torch.equal(draws, reference_draws(model, x, start, settings))


def test_sample_reads_the_runs_sampler_settings(tmp_path, monkeypatch):
    """The command passes the run's own sampler settings (config.sampler_settings of its saved config) to the
    drawing: a tiny run trained with MALA and the table on samples with both."""
    rng = np.random.default_rng(0)
    (tmp_path / "m.csv").write_text("x\n" + "".join(f"{v:.6f}\n" for v in rng.normal(2.0, 1.5, 60)))
    run_dir = tmp_path / "run"
    run_almond(
        [
            "train",
            "debug=tiny",
            "progress=plain",
            "threads=1",
            "data=file",
            "data.path=m.csv",
            "data.columns=[x]",
            "sampler.method=mala",
            "sampler.tabulate=on",
            "schedule.vae_epochs=2",
            "schedule.almond_epochs=2",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        check=True,
    )
    received = []

    class Recording(sample_command.PosteriorChains):
        def __init__(self, *args, **kwargs):
            received.append(kwargs["settings"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sample_command, "PosteriorChains", Recording)
    monkeypatch.chdir(tmp_path)
    for step_size, name in ((None, "tuned.csv"), (0.05, "fixed.csv")):  # tuned MALA, and the run's own at a step
        result = sample_command.sample(
            run_dir,
            what="posterior",
            out=str(tmp_path / name),
            num_chains=2,
            num_draws=8,
            thin=2,
            burn_in=2,
            step_size=step_size,
            device="cpu",
            threads=1,
        )
        assert result["rows"] == 60
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert received == [sampler_settings(saved.sampler)] * 2
    assert received[0].method == "mala" and received[0].tabulate == "on"


def test_settings_of_a_run_saved_before_the_keys_existed_are_the_old_behaviour():
    """A sampler config without method, precision, tabulate and table_nodes (almond 0.1.0 wrote none of the last
    three) reads ULA, fp32, no table, 2049 nodes: how such a run trained."""
    from omegaconf import OmegaConf

    old = OmegaConf.create(
        {
            "step_size": 0.02,
            "step_size_decay": "constant",
            "min_step_size_fraction": 0.1,
            "num_steps": 3,
            "burn_in": 1,
            "num_chains": 4,
        }
    )
    assert sampler_settings(old) == SamplerSettings(
        step_size=0.02,
        step_size_decay="constant",
        num_steps=3,
        burn_in=1,
        num_chains=4,
        method="ula",
        precision="fp32",
        tabulate="off",
        table_nodes=2049,
    )
    # YAML's bare off is a boolean; it reads as text, which validate then refuses with its quoting advice.
    assert sampler_settings(OmegaConf.create({**old, "tabulate": False})).tabulate == "False"
