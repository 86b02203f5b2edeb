"""Saved configs are data, never code (issue 27): a checkpoint built only from dicts and tensors loads under
``torch.load(weights_only=True)``, so its ``config_yaml`` is the one place an attacker can reach Hydra's
``instantiate``. Each test crafts a run folder as an attacker would (a copy of ``tests/fixtures/run_v0_1_0`` whose
checkpoints' ``config_yaml`` and ``.hydra/config.yaml`` carry a gadget, saved again with ``torch.save`` of plain
dicts and tensors) and checks that every command reading a run refuses it: exit code 2, one line naming the key,
and the gadget's marker file (under ``tmp_path``; the only thing a gadget that ran would touch) never appears."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_config, run_almond
from omegaconf import OmegaConf

from almond_cli.commands.cli import main
from almond_cli.config import SavedConfigRefused, allowed_targets, saved_config, untrusted_key
from almond_cli.errors import ConfigError
from almond_cli.tasks.registry import build_dataset
from almond_cli.training.build import build_model
from almond_cli.training.checkpoint import load_checkpoint
from almond_cli.training.runtime import seed_streams

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0_1_0"


class _Payload:
    """Unpickling it creates ``marker`` (``open(marker, "w")``): the proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def gadgets(tmp_path: Path) -> dict[str, dict]:
    """{name: a config node that, instantiated, creates ``tmp_path/marker``}, one per known gadget."""
    marker = tmp_path / "marker"
    payload_pt, payload_pkl = tmp_path / "payload.pt", tmp_path / "payload.pkl"
    torch.save(_Payload(marker), payload_pt)
    payload_pkl.write_bytes(pickle.dumps(_Payload(marker)))
    return {
        "torch.load": {"_target_": "torch.load", "f": str(payload_pt), "weights_only": False},
        "joblib.load": {"_target_": "joblib.load", "filename": str(payload_pkl)},
        # pickle.loads of the file's bytes, read by nested instantiation (Path(...).read_bytes()).
        "pickle.loads": {
            "_target_": "pickle.loads",
            "data": {
                "_target_": "pathlib.Path.read_bytes",
                "self": {"_target_": "pathlib.Path", "_args_": [str(payload_pkl)]},
            },
        },
        "subprocess.run": {"_target_": "subprocess.run", "args": ["touch", str(marker)]},
        "builtins.eval": {"_target_": "builtins.eval", "_args_": [f"open({str(marker)!r}, 'w')"]},
        "os.system": {"_target_": "os.system", "command": f"touch '{marker}'"},
    }


def place(config: dict, where: str, gadget: dict) -> str:
    """Puts ``gadget`` into ``config`` (a plain saved config) and returns the key a refusal must name.

    ``where``: "likelihood" (an argument of the likelihood, ``likelihood.sigma``), "encoder" (the encoder's own
    ``_target_`` and arguments), "decoder" (an argument of the decoder, ``decoder.activation``).
    """
    if where == "likelihood":
        config["likelihood"]["sigma"] = gadget
        return "likelihood.sigma"
    if where == "encoder":
        config["encoder"] = dict(gadget)
        return "encoder._target_"
    config["decoder"]["activation"] = gadget
    return "decoder.activation"


def tamper(run_dir: Path, where: str, gadget: dict) -> str:
    """Writes ``gadget`` into every checkpoint's ``config_yaml`` and into ``.hydra/config.yaml`` of ``run_dir``,
    as an attacker would: plain dicts and tensors saved with ``torch.save``; returns the key a refusal names."""
    key = None
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        payload = load_checkpoint(path)  # weights_only=True: dicts and tensors
        config = yaml.safe_load(payload["config_yaml"])
        key = place(config, where, gadget)
        payload["config_yaml"] = yaml.safe_dump(config)
        torch.save(payload, path)
        assert torch.load(path, weights_only=True)["config_yaml"] == payload["config_yaml"]  # loads as data
    hydra_config = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(hydra_config.read_text())
    place(config, where, gadget)
    hydra_config.write_text(yaml.safe_dump(config))
    return key


def copy_of_the_fixture(destination: Path) -> Path:
    shutil.copytree(OLD_RUN, destination)
    (destination / ".lock").unlink(missing_ok=True)
    return destination


def crafted_run(tmp_path: Path, gadget_name: str, where: str) -> tuple[Path, str]:
    run_dir = copy_of_the_fixture(tmp_path / "run")
    return run_dir, tamper(run_dir, where, gadgets(tmp_path)[gadget_name])


def command_line(command: str, run_dir: Path, tmp_path: Path) -> list[str]:
    """The arguments of ``almond <command>`` reading ``run_dir`` (for compare: a sweep holding it and a clean job)."""
    if command == "sample":
        return ["sample", str(run_dir), "what=prior", "n=10", f"out={tmp_path / 'prior.csv'}", "threads=1"]
    if command == "compare":
        sweep = tmp_path / "sweep"
        sweep.mkdir()
        run_dir.rename(sweep / "1")
        copy_of_the_fixture(sweep / "0")
        return ["compare", str(sweep)]
    if command == "resume":
        return ["train", f"resume={run_dir}", "threads=1"]
    if command == "warm_start":
        return ["train", f"warm_start={run_dir}", f"hydra.run.dir={tmp_path / 'branch'}", "threads=1"]
    return [command, str(run_dir), "threads=1"]


def assert_refused(stderr: str, command: str, key: str, gadget_name: str, tmp_path: Path) -> None:
    assert not (tmp_path / "marker").exists(), f"the {gadget_name} gadget ran"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr  # one line, no traceback
    assert lines[0].startswith(f"almond: error: {command}: the run's saved config is refused: {key} "), stderr
    assert "Traceback" not in stderr


# (gadget, where, command): every gadget, every place, every command, spread so each appears more than once.
IN_PROCESS = [
    ("torch.load", "likelihood", "evaluate"),
    ("joblib.load", "likelihood", "prior"),
    ("pickle.loads", "decoder", "sample"),
    ("subprocess.run", "encoder", "evaluate"),
    ("builtins.eval", "likelihood", "sample"),
    ("os.system", "decoder", "prior"),
    ("torch.load", "encoder", "compare"),
    ("os.system", "likelihood", "compare"),
    ("joblib.load", "encoder", "sample"),
    ("subprocess.run", "decoder", "evaluate"),
    ("pickle.loads", "likelihood", "prior"),
    ("builtins.eval", "encoder", "evaluate"),
    ("os.system", "encoder", "resume"),
    ("torch.load", "likelihood", "warm_start"),
    ("subprocess.run", "decoder", "resume"),
    ("pickle.loads", "encoder", "warm_start"),
]


@pytest.mark.parametrize(("gadget_name", "where", "command"), IN_PROCESS)
def test_a_crafted_saved_config_is_refused_in_process(tmp_path, capsys, monkeypatch, gadget_name, where, command):
    run_dir, key = crafted_run(tmp_path, gadget_name, where)
    arguments = command_line(command, run_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert_refused(capsys.readouterr().err, command, key, gadget_name, tmp_path)
    assert not (tmp_path / "branch").exists()  # a refused warm start makes no run folder


# The installed command, a few cases: what a user (or attacker) runs, its exit code and stderr as they are.
SUBPROCESS = [
    ("torch.load", "likelihood", "evaluate"),  # the issue's own case
    ("joblib.load", "likelihood", "prior"),  # the issue's own case
    ("os.system", "encoder", "resume"),
    ("subprocess.run", "decoder", "warm_start"),
]


@pytest.mark.parametrize(("gadget_name", "where", "command"), SUBPROCESS)
def test_a_crafted_saved_config_is_refused_by_the_installed_command(tmp_path, gadget_name, where, command):
    run_dir, key = crafted_run(tmp_path, gadget_name, where)
    process = run_almond(command_line(command, run_dir, tmp_path), cwd=tmp_path)
    assert process.returncode == 2, process.stderr
    assert_refused(process.stderr, command, key, gadget_name, tmp_path)


def test_the_compare_refusal_names_the_job(tmp_path, capsys):
    run_dir, _ = crafted_run(tmp_path, "os.system", "likelihood")
    with pytest.raises(SystemExit):
        main(command_line("compare", run_dir, tmp_path))
    assert "(job 1: " in capsys.readouterr().err and not (tmp_path / "marker").exists()


def test_an_old_path_that_is_not_an_almond_class_is_refused(tmp_path):
    """An earlier almond's module path is brought up to date (``MOVED_TARGETS``) before the allow-list check, so
    a name under it that is not one of almond's classes (``almond_cli.likelihoods.os.system``) is refused."""
    config = yaml.safe_load(load_checkpoint(OLD_RUN / "checkpoints" / "last.pt")["config_yaml"])
    assert config["likelihood"]["_target_"] == "almond_cli.likelihoods.Gaussian"
    assert saved_config(yaml.safe_dump(config)).likelihood._target_ == "almond_cli.model.likelihoods.Gaussian"
    config["likelihood"]["_target_"] = "almond_cli.likelihoods.os.system"
    with pytest.raises(SavedConfigRefused, match=r"likelihood\._target_ names"):
        saved_config(yaml.safe_dump(config), "evaluate")


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["likelihood"].update(_partial_=True), "likelihood._partial_"),
        (lambda c: c["encoder"].update(_recursive_=True), "encoder._recursive_"),
        (lambda c: c["data"].update(extra={"_target_": "os.system"}), "data.extra"),
        (lambda c: c.update(_target_="os.system"), "_target_"),
        (lambda c: c["decoder"].update(hidden_sizes=[{"_target_": "os.system"}]), "decoder.hidden_sizes[0]"),
        (lambda c: c["likelihood"].update(sigma={"value": 1.0}), "likelihood.sigma"),
        (lambda c: c["likelihood"].update(sigma="${oc.create:'{_target_: os.system}'}"), "likelihood.sigma"),
    ],
)
def test_instantiate_keys_mappings_and_interpolations_are_refused_wherever_they_are(edit, key):
    config = yaml.safe_load(load_checkpoint(OLD_RUN / "checkpoints" / "last.pt")["config_yaml"])
    edit(config)
    assert untrusted_key(OmegaConf.create(config))[0] == key
    with pytest.raises(SavedConfigRefused, match=f"resume: the run's saved config is refused: {re.escape(key)} "):
        saved_config(yaml.safe_dump(config), "resume")


@pytest.mark.parametrize(
    ("group", "key", "value"),
    [("likelihood", "sigma", "abc"), ("encoder", "hidden_sizes", ["ten"]), ("decoder", "hidden_sizes", 7)],
)
def test_a_value_its_schema_cannot_hold_is_refused(group, key, value):
    """A saved config is validated against the schemas the model groups' options extend (``config.py``)."""
    config = yaml.safe_load(load_checkpoint(OLD_RUN / "checkpoints" / "last.pt")["config_yaml"])
    config[group][key] = value
    with pytest.raises(SavedConfigRefused, match=rf"sample: the run's saved config is refused: {group}\.{key} holds"):
        saved_config(yaml.safe_dump(config), "sample")


def test_every_shipped_option_names_an_allowed_class():
    """The allow-list holds every option almond ships (``tests/test_configs.py`` instantiates each one through
    ``build_model``, which refuses any other); here the YAML files' own ``_target_`` lines are checked."""
    package = Path(__file__).resolve().parents[2] / "almond_cli" / "configs"
    for group in ("likelihood", "encoder", "decoder"):
        for option in sorted((package / group).glob("*.yaml")):
            target = yaml.safe_load(option.read_text())["_target_"]
            assert target in allowed_targets(), option


def test_build_model_refuses_a_target_outside_the_allow_list(tmp_path):
    """Defence in depth: even a config that never came from a run folder instantiates only almond's classes."""
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(["debug=tiny"]), resolve=True))
    dataset = build_dataset(cfg.data, seed_streams(cfg.seed)["data"])
    build_model(cfg, dataset)  # the shipped config builds
    cfg.likelihood.sigma = {"_target_": "os.system", "command": f"touch '{tmp_path / 'marker'}'"}
    with pytest.raises(ConfigError, match=r"^likelihood\.sigma: holds a _target_ \(os\.system\)"):
        build_model(cfg, dataset)
    cfg.likelihood.sigma = 1.0
    cfg.encoder._target_ = "subprocess.run"
    with pytest.raises(ConfigError, match=r"^encoder\._target_: names 'subprocess.run'"):
        build_model(cfg, dataset)
    assert not (tmp_path / "marker").exists()


def test_a_clean_copy_of_the_fixture_is_accepted(tmp_path, capsys):
    """The check refuses only what it must: the same commands on an untampered copy succeed."""
    run_dir = copy_of_the_fixture(tmp_path / "run")
    main(command_line("sample", run_dir, tmp_path))
    assert (tmp_path / "prior.csv").is_file()


def test_a_gadget_only_in_the_run_folders_hydra_config_is_never_run(tmp_path, capsys):
    """``.hydra/config.yaml`` is Hydra's record for the user; almond reads a run's config from its checkpoint
    only, so a gadget written there alone is never instantiated and the run still works."""
    run_dir = copy_of_the_fixture(tmp_path / "run")
    hydra_config = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(hydra_config.read_text())
    place(config, "likelihood", gadgets(tmp_path)["torch.load"])
    hydra_config.write_text(yaml.safe_dump(config))
    main(["prior", str(run_dir), "threads=1"])
    assert not (tmp_path / "marker").exists()
