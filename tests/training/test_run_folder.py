"""``RunFolder``: where a run's checkpoints go, which are kept, and which one a run is continued or read back from."""

from __future__ import annotations

import os

import pytest
import torch

from almond_cli.errors import UsageError
from almond_cli.training.checkpoint import load_checkpoint
from almond_cli.training.position import Phase
from almond_cli.training.run_folder import RunFolder


def _save(folder: RunFolder, step: int, phase: Phase = Phase.ALMOND, keep: int = 1, vae: bool = False) -> None:
    folder.save({"step": torch.tensor(step)}, step, phase, keep, vae=vae)


def test_save_names_publishes_and_prunes(tmp_path):
    folder = RunFolder(tmp_path / "run")
    _save(folder, 10, Phase.VAE)
    _save(folder, 20, vae=True)
    _save(folder, 30)
    _save(folder, 40, Phase.DONE)
    names = [path.name for path in folder.numbered_checkpoints()]
    assert names == ["step-000000030-almond.pt", "step-000000040-done.pt"]  # keep=1: the newest and one older
    assert os.path.samefile(folder.last, folder.numbered(40, Phase.DONE))  # last.pt is the newest's twin
    assert int(load_checkpoint(folder.vae)["step"]) == 20
    assert folder.holds_a_run() and not RunFolder(tmp_path / "other").holds_a_run()
    assert [path.name for path in folder.checkpoints.iterdir() if path.name.startswith(".")] == []  # no temp left


def test_newest_checkpoint_skips_unloadable_ones_and_names_the_one_used(tmp_path, capsys):
    folder = RunFolder(tmp_path / "run")
    for step in (10, 20):
        _save(folder, step)
    assert int(folder.newest_checkpoint("evaluate")[1]["step"]) == 20 and capsys.readouterr().err == ""
    data = folder.last.read_bytes()
    folder.last.unlink()  # a hard link of step 20: cut both copies, as a kill during a copy could
    for path in (folder.last, folder.numbered(20, Phase.ALMOND)):
        path.write_bytes(data[: len(data) // 2])
    path, payload = folder.newest_checkpoint("evaluate")
    assert path == folder.numbered(10, Phase.ALMOND) and int(payload["step"]) == 10
    err = capsys.readouterr().err
    assert "warning" in err and "damaged" in err and f"evaluate uses {path}" in err
    folder.numbered(10, Phase.ALMOND).write_bytes(b"")
    with pytest.raises(UsageError, match="resume: no checkpoint in .* can be loaded"):
        folder.newest_checkpoint("resume")


def test_a_folder_without_checkpoints_is_refused_in_words(tmp_path):
    folder = RunFolder(tmp_path)
    with pytest.raises(UsageError, match="sample: .* is not an almond run folder: it has no checkpoints/last.pt"):
        folder.newest_checkpoint("sample")
    folder.log.write_text("diverged\n")
    with pytest.raises(
        UsageError,
        match=r"holds no checkpoint: that run stopped before writing its first one \(its "
        r"train.log says why\)",
    ):
        folder.newest_checkpoint("resume")


def test_a_checkpoint_file_names_its_run(tmp_path):
    folder = RunFolder(tmp_path / "run")
    _save(folder, 5)
    assert RunFolder.of_checkpoint(folder.last).path == folder.path
    assert RunFolder.of_target(folder.last).path == folder.path and RunFolder.of_target(folder.path).path == folder.path
    assert RunFolder.of_checkpoint(tmp_path / "loose.pt").path == tmp_path  # a file outside a checkpoints/ folder
    baseline = folder.path / "baselines" / "gaussian_glmm"
    assert folder.baseline("gaussian_glmm").last == baseline / "checkpoints" / "last.pt"
    first, second = folder.new_output_folder(RunFolder.EVAL), folder.new_output_folder(RunFolder.EVAL)
    assert first != second and first.parent == second.parent == folder.path / "eval"
