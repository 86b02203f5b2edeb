"""The installed command end to end on the tiny debug config, and a short seeded run's accuracy."""

import json

import torch
from conftest import read_metrics, run_almond

from almond_cli.config import saved_config
from almond_cli.tasks.empirical_bayes import fit_normal_prior
from almond_cli.tasks.metrics import ks_distance, latent_draws, w1_distance
from almond_cli.tasks.registry import build_dataset
from almond_cli.training.build import load_model_state
from almond_cli.training.checkpoint import load_checkpoint
from almond_cli.training.runtime import seed_streams

TINY = ["debug=tiny", "progress=plain", "threads=1"]


def test_train_writes_the_whole_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    process = run_almond(["train", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "train.log",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/vae.pt",
        "figures/latent_density.png",
    ):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"vae", "almond", "baselines", "timing", "precision"}
    # precision=auto and tabulate=auto by default; d = 1, so the table runs (in float32 whatever the hardware)
    assert summary["precision"] == {"requested": "auto", "langevin": "fp32", "tabulated": True}
    for method in (summary["vae"], summary["almond"], summary["baselines"]["normal_eb"]):
        assert 0.0 < method["ks"] < 1.0 and method["w1"] > 0.0
        assert 0.0 < method["ks_true_means"] < 1.0 and method["w1_true_means"] > 0.0
    assert summary["timing"]["vae_seconds"] > 0 and summary["timing"]["almond_seconds"] > 0
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records if r["phase"] == "vae"] == list(range(1, 21))
    assert [r["epoch"] for r in records if r["phase"] == "almond"] == list(range(1, 21))
    almond = [r for r in records if r["phase"] == "almond"]
    assert all({"step", "loss", "lr", "step_size", "seconds"} <= set(r) for r in almond)
    assert [r["step"] for r in records] == list(range(1, 41))
    assert (run_dir / "figures/latent_density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The scores are those of the saved models: ALMOND's of last.pt, the VAE's of vae.pt, the baseline's of the
    # maximum-likelihood normal fit to the data, recomputed here from the files alone (a row scored on the wrong model would differ).
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = saved_config(payload["config_yaml"])
    dataset = build_dataset(cfg.data, seed_streams(cfg.seed)["data"])
    for method, checkpoint in (("almond", "last.pt"), ("vae", "vae.pt")):
        state = load_checkpoint(run_dir / "checkpoints" / checkpoint)["model"]
        draws = latent_draws(load_model_state(cfg, dataset, state, torch.device("cpu")), cfg, "cpu")[:, 0]
        assert summary[method]["ks"] == ks_distance(draws, dataset.prior.cdf), method
    eb = fit_normal_prior(dataset.x[:, 0], 1.0)
    eb_draws = eb.sample(cfg.evaluation.num_draws, torch.Generator().manual_seed(cfg.evaluation.seed))
    assert summary["baselines"]["normal_eb"]["w1"] == w1_distance(eb_draws, dataset.prior.cdf, *dataset.prior.bulk())
    assert summary["almond"]["train_nll"] > 1.4  # −log p(x) per point of x = mu + N(0, 1): above 0.5 log(2πe)
    # The baselines' likelihoods are exact, ALMOND's estimated; the paired gain is the difference of the two means.
    assert set(summary["baselines"]) == {"normal_eb", "npmle"}
    for baseline in summary["baselines"].values():
        assert abs(baseline["almond_gain"] - (baseline["train_nll"] - summary["almond"]["train_nll"])) < 1e-9
        assert baseline["almond_gain_se"] > 0
    # Posterior-mean MSE against the true means: exact for the baselines (recomputed here), estimated for the models.
    from almond_cli.tasks.empirical_bayes import posterior_means

    eb_means = posterior_means(eb, dataset.x[:, 0], 1.0)
    assert summary["baselines"]["normal_eb"]["mse_posterior_mean"] == float(
        (eb_means - dataset.truth[:, 0].double()).square().mean()
    )
    assert summary["almond"]["mse_posterior_mean"] > 0 and summary["vae"]["mse_posterior_mean"] > 0
    # The NPMLE maximises the likelihood over all priors: no normal prior does better on the same rows.
    assert summary["baselines"]["npmle"]["train_nll"] < summary["baselines"]["normal_eb"]["train_nll"]


def test_a_short_seeded_run_beats_its_warm_start(tmp_path):
    """ALMOND corrects the VAE: on the exponential prior, seed 1, a few seconds of training (the fast preset cut
    to 200 + 100 epochs) lower W1 to the true prior from 0.427 to 0.231 (measured; seeds 2 and 3: 0.203 → 0.080,
    0.238 → 0.062). The margin asked, 0.1, is below the smallest of those three gains (0.12)."""
    run_dir = tmp_path / "run"
    process = run_almond(
        [
            "train",
            "experiment=mnn_exponential_fast",
            "seed=1",
            "threads=1",
            "progress=silent",
            "schedule.vae_epochs=200",
            "schedule.almond_epochs=100",
            "schedule.warmup_epochs=100",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["almond"]["w1"] < summary["vae"]["w1"] - 0.1, summary
    assert summary["almond"]["w1"] < summary["baselines"]["normal_eb"]["w1"]
