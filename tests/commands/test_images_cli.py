"""``almond train experiment=mnist_*`` through the installed command: composition, a tiny end-to-end run on the
shared MNIST 10k split, and exit code 2 for unusable data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import MNIST_DIR, read_metrics, run_almond
from hydra import compose, initialize_config_module

from almond_cli.config import register_schemas, validate
from almond_cli.data.idx import write_idx

needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the shared MNIST 10k split is not at {MNIST_DIR} (set ALMOND_MNIST_DIR)",
)

TINY = [
    "schedule.vae_epochs=1",
    "schedule.almond_epochs=1",
    "data.subset=400",
    "evaluation.nll_images=50",
    "evaluation.nll_samples=10",
    "encoder.channels=[4,8,8]",
    "decoder.channels=[4,8,8]",
    "encoder.dense_units=32",
    "decoder.dense_units=32",
    "progress=plain",
    "threads=1",
]


@pytest.mark.parametrize(
    "experiment,latent_dim,chains,steps,step_size",
    [("mnist_20d", 20, 20, 5, 0.02), ("mnist_2d", 2, 50, 2, 0.002), ("mnist_cpu", 20, 2, 3, 0.02)],
)
def test_experiments_compose_with_the_paper_settings(experiment, latent_dim, chains, steps, step_size):
    register_schemas()
    with initialize_config_module(config_module="almond_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "data.root=/somewhere"])
    validate(cfg)
    assert cfg.latent_dim == latent_dim and cfg.sampler.num_chains == chains and cfg.sampler.num_steps == steps
    assert cfg.sampler.step_size == step_size and cfg.schedule.batch_size == 200
    assert cfg.likelihood._target_.endswith("Bernoulli") and cfg.decoder._target_.endswith("ConvDecoder")
    if experiment != "mnist_cpu":
        assert cfg.schedule.vae_epochs == 500 and list(cfg.encoder.channels) == [64, 64, 64]
        assert cfg.encoder.dense_units == 1024


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["mnist_2d", "mnist_20d"])
def test_paper_experiments_run_one_tiny_epoch_on_cpu(tmp_path, experiment):
    run_dir = tmp_path / "run"
    process = run_almond(
        [
            "train",
            f"experiment={experiment}",
            f"data.root={MNIST_DIR}",
            "data.splits=[t10k]",
            "data.held_out_split=null",
            "device=cpu",
            "sampler.num_chains=4",
            *TINY,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.isfinite(summary["almond"]["test_nll"])
    assert (run_dir / "figures/latent_map.png").is_file() == (experiment == "mnist_2d")


@needs_mnist
def test_mnist_cpu_tiny_run_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    process = run_almond(
        ["train", "experiment=mnist_cpu", f"data.root={MNIST_DIR}", "latent_dim=2", *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    for phase in ("vae", "almond"):
        # 784 continuous pixels: a barely trained model costs between ~100 and ~545 (= 784 log 2) nats.
        assert 50 < summary[phase]["test_nll"] < 600 and 0 < summary[phase]["test_nll_se"] < 20
    for name in ("samples.png", "reconstructions.png", "latent_map.png"):
        assert (run_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert [r["phase"] for r in read_metrics(run_dir)] == ["vae", "almond"]
    state = torch.load(run_dir / "checkpoints/vae.pt", weights_only=True)
    assert tuple(state["vae_snapshot"]["samples"].shape) == (100, 784)


def test_missing_data_folder_exits_2_with_one_paragraph(tmp_path, almond_refuses):
    line = almond_refuses(
        ["train", "experiment=mnist_cpu", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert "data.root:" in line and "not a folder" in line
    assert not (tmp_path / "run").exists()


def test_wrong_magic_exits_2(tmp_path, almond_refuses):
    data = tmp_path / "data"
    data.mkdir()
    write_idx(data / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28), dtype=np.uint8))
    write_idx(data / "t10k-labels-idx1-ubyte.gz", np.zeros((20, 28, 28), dtype=np.uint8))  # 3-d "labels"
    line = almond_refuses(
        ["train", "experiment=mnist_cpu", f"data.root={data}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert "magic number 0x00000803, not 0x00000801" in line


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.pixels=grey", "data.pixels"),
        ("data.held_out_split=t10k", "data.held_out_split"),
        ("evaluation.nll_samples=0", "evaluation.nll_samples"),
        ("encoder.channels=[]", "encoder.channels"),
    ],
)
def test_bad_image_settings_exit_2_before_anything_runs(override, key, capsys):
    from almond_cli.commands.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "experiment=mnist_cpu", "data.root=/x", override])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"almond: error: {key}:")


@needs_mnist
@pytest.mark.gpu
def test_mnist_runs_end_to_end_on_cuda(tmp_path):
    run_dir = tmp_path / "run"
    process = run_almond(
        [
            "train",
            "experiment=mnist_2d",
            f"data.root={MNIST_DIR}",
            "data.splits=[t10k]",
            "data.held_out_split=null",
            "data.pixels=dynamic",
            "device=cuda",
            *TINY,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.isfinite(summary["vae"]["test_nll"]) and np.isfinite(summary["almond"]["test_nll"])
    assert (run_dir / "figures/latent_map.png").is_file()


def test_network_sizes_that_do_not_fit_the_images_exit_2(tmp_path, almond_refuses):
    data = tmp_path / "data"
    data.mkdir()
    write_idx(data / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28), dtype=np.uint8))
    write_idx(data / "t10k-labels-idx1-ubyte.gz", np.zeros(20, dtype=np.uint8))
    line = almond_refuses(
        [
            "train",
            "experiment=mnist_cpu",
            f"data.root={data}",
            "encoder.image_shape=[1,20,20]",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert "encoder.image_shape: [1, 20, 20] does not hold the 784 values" in line, line


@needs_mnist
def test_the_chain_checks_do_not_change_training_of_a_batch_norm_model(tmp_path):
    """Diagnostics only read: a conv (batch norm) run with the chain checks after every ALMOND epoch (here the d = 2
    exact-posterior check through the conv decoder) ends with bitwise the same parameters, batch-norm statistics and
    test_nll as the same run without them (a check once ran in train mode and overwrote the running statistics)."""
    finals = []
    for every in (1, 0):
        run_dir = tmp_path / f"rhat-{every}"
        process = run_almond(
            [
                "train",
                "experiment=mnist_cpu",
                f"data.root={MNIST_DIR}",
                "latent_dim=2",
                *TINY,
                "schedule.almond_epochs=2",
                "schedule.warmup_epochs=2",
                f"diagnostics.rhat_every_epochs={every}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
        )
        assert process.returncode == 0, process.stderr
        assert any("posterior_ks_mean" in record for record in read_metrics(run_dir)) == bool(every)
        state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model"]
        finals.append((state, json.loads((run_dir / "summary.json").read_text())["almond"]["test_nll"]))
    (checked, nll_checked), (plain, nll_plain) = finals
    assert checked.keys() == plain.keys()
    assert all(torch.equal(checked[key], plain[key]) for key in plain), [
        key for key in plain if not torch.equal(checked[key], plain[key])
    ]
    assert nll_checked == nll_plain
