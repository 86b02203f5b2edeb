"""Bad input fails before training: one paragraph naming the key, exit code 2, no traceback, no folder."""

import pytest
from conftest import run_almond


@pytest.mark.parametrize(
    "override,needle",
    [
        ("sampler.step_size=abc", "sampler.step_size"),
        ("sampler.step_size=-0.01", "sampler.step_size"),
        ("sampler.num_chains=0", "sampler.num_chains"),
        ("data.prior=gamma", "data.prior"),
        ("encoder=transformer", "encoder"),
        ("experiment=mnn_nothing", "experiment"),
        ("sampler.burn_in=10", "sampler.burn_in"),
        ("sampler.precision=fp16", "sampler.precision"),
        ("+sampler.foo=1", "sampler.foo"),
        ("sampler.stepsize=0.1", "stepsize"),
        ("data.holdout_fraction=1.0", "data.holdout_fraction"),
        ("likelihood=poisson sampler.tabulate=on", "sampler.tabulate"),
    ],
)
def test_bad_input_exits_2_with_one_clear_paragraph(tmp_path, override, needle, almond_refuses):
    line = almond_refuses(["train", *override.split(), "debug=tiny"], cwd=tmp_path)
    assert needle in line
    assert not (tmp_path / "outputs").exists()


def test_the_installed_command_refuses_in_one_paragraph(tmp_path):
    """The cases above run ``cli.main`` in-process; one of them as a user meets it, in a process of its own."""
    process = run_almond(["train", "sampler.step_size=abc", "debug=tiny"], cwd=tmp_path, timeout=120)
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr + process.stdout
    message = process.stderr.strip()
    assert message.startswith("almond: error:") and "sampler.step_size" in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_help_lists_train(tmp_path):
    process = run_almond(["--help"], cwd=tmp_path)
    assert process.returncode == 0 and "train" in process.stdout
