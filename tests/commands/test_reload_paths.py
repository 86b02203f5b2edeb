"""A run on a file named by a relative path is read back from any folder: every data option's path keys are
resolved against the folder ``almond train`` ran in (``DataOption.path_keys``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_almond


@pytest.mark.slow
def test_a_glmm_file_run_with_a_relative_path_is_sampled_from_another_folder(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    rng = np.random.default_rng(0)
    z = rng.normal(size=60)
    counts = rng.poisson(np.exp(0.5 + z * rng.gamma(2.0, 1.0, 60) * 0.3))
    (project / "counts.csv").write_text("y,z\n" + "".join(f"{c},{v:.4f}\n" for c, v in zip(counts, z)))
    run_almond(
        [
            "train",
            "data=glmm_file",
            "likelihood=poisson_glmm",
            "decoder=linear",
            "data.path=counts.csv",
            "data.response=y",
            "data.random_effects=[z]",
            "data.gaussian_baseline=false",
            "debug=tiny",
            "threads=1",
            "schedule.vae_epochs=2",
            "schedule.almond_epochs=2",
            "hydra.run.dir=run",
        ],
        cwd=project,
        check=True,
    )
    out = elsewhere / "prior.csv"
    process = run_almond(["sample", str(project / "run"), "what=prior", "n=10", f"out={out}"], cwd=elsewhere)
    assert process.returncode == 0, process.stderr
    assert out.read_text().splitlines()[0] == "u" and len(out.read_text().splitlines()) == 11
