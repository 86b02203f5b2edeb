"""``logger=tensorboard``: event files in the run folder that TensorBoard's own reader understands, with the
tags the issue lists, values equal to ``metrics.jsonl`` (the record), and a throughput in the plain log."""

import pytest
from conftest import read_metrics, run_almond

from almond_cli.training.console import Throughput


def test_throughput_counts_updates_per_second():
    rate = Throughput(window=2)
    assert rate.tick(5, now=0.0) == 0.0
    assert rate.tick(5, now=1.0) == pytest.approx(5.0)
    assert rate.tick(10, now=2.0) == pytest.approx(7.5)
    assert rate.tick(10, now=3.0) == pytest.approx(10.0)  # the window forgets the first tick


@pytest.mark.slow
def test_tensorboard_events_hold_the_run(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    process = run_almond(
        [
            "train",
            "debug=tiny",
            "threads=1",
            "progress=plain",
            "logger=tensorboard",
            "diagnostics.rhat_every_epochs=5",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    assert "updates/s" in (run_dir / "train.log").read_text()
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {
        "vae/loss",
        "vae/lr",
        "almond/loss",
        "almond/lr",
        "almond/langevin_step_size",
        "chains/mean_log_joint",
        "chains/grad_norm",
        "chains/nonfinite_fraction",
        "chains/rhat_max",
        "chains/rhat_median",
        "chains/ess_bulk_min",
        "chains/posterior_ks_mean",
        "metrics/almond/w1",
        "metrics/almond/ks",
        "metrics/vae/w1",
        "metrics/normal_eb/w1",
    }
    assert expected <= scalars, expected - scalars
    assert events.Tags()["images"] == ["figures/latent_density"]
    records = read_metrics(run_dir)
    almond = [r for r in records if r["phase"] == "almond"]
    losses = events.Scalars("almond/loss")
    assert [e.step for e in losses] == [r["step"] for r in almond]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in almond], rel=1e-6)
    rhat = events.Scalars("chains/rhat_max")
    assert [e.step for e in rhat] == [r["step"] for r in almond if "rhat_max" in r]
    assert len(rhat) == 4  # every 5 of 20 ALMOND epochs
    image = events.Images("figures/latent_density")[0]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 100
