"""The installed command end to end on the tiny debug config."""

import json

from conftest import read_metrics, run_almond

TINY = ["debug=tiny", "progress=plain", "threads=1"]


def test_train_writes_the_whole_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    process = run_almond(["train", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "metrics.jsonl", "summary.json",
                 "checkpoints/last.pt", "checkpoints/vae.pt", "figures/latent_density.png"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"vae", "almond", "baselines", "timing"}
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
