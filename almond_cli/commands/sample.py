"""``almond sample <run folder> what=prior|posterior ...``: draws from a fitted model, without retraining.

- ``what=prior``: n draws of u = h(z), z ~ N(0, I_d), from the learned latent distribution, to ``.npy`` or ``.csv``.
- ``what=posterior``: for every data point, draws of u from p(u | x_i) under the fitted model by the same
  multi-chain Langevin sampler and target that trained it (``sampler.run`` under ``settings.build_target`` with the
  run's sampler settings: tabulated, fused, bf16, MALA as training ran; Qiu & Wang 2019, Section 3), started from
  the run's persistent chains; a CSV with the posterior mean, sd and a central interval per row — the
  empirical-Bayes shrinkage estimates. Where the true latent values are known (a simulation, or
  ``data.truth_path``), the printed summary gives the mean squared error of the posterior means, and for a
  Gaussian likelihood also that of the raw x and of the normal empirical-Bayes (James–Stein-type) estimates.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ..atomic import write_atomic, write_text_atomic
from ..config import sampler_settings
from ..errors import UsageError
from ..langevin import sampler
from ..langevin.chains import ESCAPE_BOUND, within_prior_range
from ..langevin.diagnostics import ess_bulk, rank_rhat
from ..langevin.settings import SamplerSettings, build_target
from ..langevin.tabulated import TabulatedTarget
from ..model.mixed import MixedModel
from ..model.model import prior_draws
from ..model.units import UnitRows
from ..tasks.empirical_bayes import posterior_means
from ..tasks.mixed import group_posterior_csv, group_posteriors, law_draws
from ..tasks.normal_means import normal_empirical_bayes, row_noise_sd
from ..training.position import Phase
from ..training.run_folder import RunFolder, load_run
from ..training.schedules import langevin_step_size
from .arguments import DEVICE, THREADS, Argument, Command, at_least, boolean, positive

ARGUMENTS = {
    "what": Argument(
        str,
        None,
        lambda v: None if v in ("prior", "posterior") else f"must be prior or posterior, got {v!r}",
        "prior or posterior",
    ),
    "n": Argument(int, 10_000, at_least(1), "number of prior draws, an integer >= 1"),
    "out": Argument(str, None, help="output file: .npy or .csv for prior draws, .csv for the posterior summary"),
    "draws_out": Argument(str, None, help="optional .npy file for all posterior draws, shape (rows, draws, P)"),
    "overwrite": Argument(boolean, False, help="true lets out= and draws_out= replace an existing file"),
    "seed": Argument(int, 0, help="seed of the draws, an integer"),
    "num_chains": Argument(int, 20, at_least(1), "Langevin chains per data point, an integer >= 1"),
    "num_draws": Argument(int, 100, at_least(1), "draws kept per chain, an integer >= 1"),
    "thin": Argument(int, 10, at_least(1), "Langevin steps between kept draws, an integer >= 1"),
    "burn_in": Argument(int, 200, at_least(0), "Langevin steps before the first kept draw, an integer >= 0"),
    "step_size": Argument(float, None, positive, "Langevin step size > 0; None = the run's final training step size"),
    "level": Argument(
        float,
        0.9,
        lambda v: None if 0 < v < 1 else f"must be in (0, 1), got {v}",
        "central interval probability in (0, 1)",
    ),
    "device": DEVICE,
    "threads": THREADS,
}


# ----- drawing -----------------------------------------------------------------------------------------------------
def posterior_draws(
    model,
    x: torch.Tensor,
    num_chains: int,
    num_draws: int,
    thin: int,
    burn_in: int,
    step_size: float,
    generator: torch.Generator,
    start: torch.Tensor | None = None,
    max_particles: int = 200_000,
    settings: SamplerSettings = SamplerSettings(),
    unit_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Langevin draws of u = h(z) from p(z | x_i) for every row (every unit: p(z | its rows) where ``unit_index``
    groups rows in units), by ``sampler.run`` under the target training used.

    Each chain runs ``burn_in`` steps, then keeps one state every ``thin`` steps, ``num_draws`` times. Every such
    segment runs under ``langevin.settings.build_target`` built for it, as an ALMOND update builds its target: the
    tabulated decoder where ``settings.tabulate`` asks for it (its grid around the chains' range at the segment's
    start, widened for the segment's steps), else the fused MLP target in ``settings.precision`` where the model
    allows it, else autograd; moved by ``settings.method`` (ULA or MALA). The other fields of ``settings`` (the
    step-size schedule, steps per update, chains) are training's and not read here.

    Args:
        model: the fitted ``LatentVariableModel`` (eval mode).
        x: (n, D) data.
        num_chains: C chains per row.
        num_draws: states kept per chain.
        thin: steps between kept states.
        burn_in: steps before the first kept state.
        step_size: the Langevin step size s.
        generator: noise source (on x's device).
        start: (n, C', d) starting positions with C' >= C (e.g. the run's persistent chains); None starts
            from the encoder's q(z | x).
        max_particles: rows are processed in chunks of at most this many (row, chain) pairs.
        settings: the run's sampler settings (``config.sampler_settings``); the default is ULA on the fused
            float32 target without a table.
        unit_index: (n,) each row's unit 0..U-1 (``start`` is then (U, C', d)); None: every row its own unit.

    Returns:
        (n, num_draws · C, P) draws of u on CPU, float32; (U, num_draws · C, P) with units.
    """
    rows = max(1, max_particles // num_chains)
    unit_rows = None if unit_index is None else UnitRows(unit_index)
    segments = ([burn_in] if burn_in > 0 else []) + [thin] * num_draws
    chunks = []
    with model.frozen():
        for first in range(0, x.shape[0] if unit_rows is None else unit_rows.num_units, rows):
            units = None  # every row its own unit
            if unit_rows is None:
                batch = x[first : first + rows]
            else:  # a chunk of units with all their rows
                picked, units = unit_rows.of(torch.arange(first, min(first + rows, unit_rows.num_units)))
                batch, units = x[picked.to(x.device)], units.to(x.device)
            if start is not None:
                z = start[first : first + rows, :num_chains].to(x.device)
            else:
                with torch.no_grad():
                    z = model.sample_posterior_approx(batch, num_chains, generator, units)
            draws = []
            for index, steps in enumerate(segments):
                target = build_target(model, batch, z, settings, step_size, steps, units)
                kept, _ = sampler.run(z, target, step_size, steps, steps - 1, generator, settings.method)
                z = kept[-1]
                if index >= len(segments) - num_draws:
                    draws.append(decode(model, target, z).cpu())  # (B, C, P)
            chunks.append(torch.cat(draws, dim=1))
    return torch.cat(chunks).float()


@torch.no_grad()
def decode(model, target, z: torch.Tensor) -> torch.Tensor:
    """u = h(z) (B, C, P) at the chains ``z`` (B, C, d) that ``target`` moved: read from its table when it is a
    ``tabulated.TabulatedTarget`` (within its Hermite error of the decoder, 1e-6 and less, as training's loss reads
    it; the decoder itself at a chain outside the grid), else the decoder's forward pass."""
    if isinstance(target, TabulatedTarget):
        batch, chains, _ = z.shape
        return target.interpolate(z.reshape(batch * chains))[0].view(batch, chains, -1)
    return model.decoder(z)


def summarise(draws: torch.Tensor, level: float) -> dict[str, torch.Tensor]:
    """Posterior mean, sd and central ``level`` interval per row and coordinate: each (n, P)."""
    tail = (1.0 - level) / 2.0
    draws = draws.double()
    quantiles = torch.quantile(draws, torch.tensor([tail, 1.0 - tail], dtype=torch.float64), dim=1)
    return {"mean": draws.mean(1), "sd": draws.std(1), "lower": quantiles[0], "upper": quantiles[1]}


def normal_eb_means(x: torch.Tensor, sd: torch.Tensor | float) -> torch.Tensor:
    """Posterior means under the moment-fitted normal prior N(m, tau²) (James–Stein-type shrinkage).

    Args:
        x: (n,) measurements.
        sd: the noise sd, one number or (n,) per row.

    Returns:
        (n,) m + tau² / (tau² + sd_i²) (x_i − m).
    """
    sd = torch.as_tensor(sd, dtype=torch.float64)
    return posterior_means(normal_empirical_bayes(x, float(sd.square().mean().sqrt())), x, sd)


def comparison(dataset, likelihood, posterior_mean: torch.Tensor) -> dict[str, float]:
    """MSE against the truth of the posterior means and, for Gaussian data, of raw x and normal EB."""
    truth = dataset.truth.double()
    results = {"mse_posterior_mean": float((posterior_mean.double() - truth).square().mean())}
    x = dataset.x.double()
    if likelihood.noise_sd(x) is not None:  # Gaussian noise: raw x and normal EB are estimates of u too
        sd = row_noise_sd(likelihood, x)
        values = likelihood.observations(x)
        if values.shape == truth.shape:
            results["mse_raw_x"] = float((values - truth).square().mean())
            if values.shape[1] == 1:
                results["mse_normal_eb"] = float((normal_eb_means(values[:, 0], sd) - truth[:, 0]).square().mean())
    return results


# ----- writing -----------------------------------------------------------------------------------------------------
def _names(dataset, width: int) -> list[str]:
    """Observation column names."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return ["x"] if width == 1 else [f"x{j}" for j in range(width)]


def _stats_header(suffixes: list[str], level: float, likelihood, stats: dict) -> list[str]:
    """The posterior columns of each latent coordinate: post_mean, post_sd, the interval bounds (``q5``, ``q95`` at
    level 0.9) and, where the likelihood has one, the natural-scale posterior mean."""
    tail = 100 * (1 - level) / 2
    header = []
    for s in suffixes:
        header += [f"post_mean{s}", f"post_sd{s}", f"q{tail:g}{s}", f"q{100 - tail:g}{s}"]
        if "natural_mean" in stats:
            header.append(f"post_mean_{likelihood.mean_name}{s}")
    return header


def _stats_cells(stats: dict, index: int) -> list[str]:
    """Line ``index`` of the ``_stats_header`` columns."""
    cells = []
    for p in range(stats["mean"].shape[1]):
        cells += [f"{float(stats[key][index, p]):.6g}" for key in ("mean", "sd", "lower", "upper")]
        if "natural_mean" in stats:
            cells.append(f"{float(stats['natural_mean'][index, p]):.6g}")
    return cells


def posterior_csv(dataset, likelihood, stats: dict, level: float) -> str:
    """The per-row table: row, observations, the likelihood's per-row columns under their names (``sd`` for
    gaussian_hetero), [truth], post_mean, post_sd, interval bounds, and for Poisson/Bernoulli the posterior mean of
    the rate exp(u) / probability sigmoid(u)."""
    x = dataset.x.double()
    values, row_columns = likelihood.split_row(x)
    observed = _names(dataset, values.shape[1])
    num_latent = stats["mean"].shape[1]
    suffixes = (
        [""]
        if num_latent == 1
        else [f"_{name}" for name in observed]
        if len(observed) == num_latent
        else [f"_{j}" for j in range(num_latent)]
    )
    ids = dataset.ids
    header = ["row"] + ([dataset.id_name or "id"] if ids is not None else []) + [*observed]
    header += list(row_columns)
    if dataset.truth is not None:
        header += [f"truth{s}" for s in suffixes]
    header += _stats_header(suffixes, level, likelihood, stats)
    rows = dataset.rows()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i in range(x.shape[0]):
        line = [rows[i]] + ([ids[i]] if ids is not None else []) + [f"{v:.6g}" for v in values[i].tolist()]
        line += [f"{float(column[i]):.6g}" for column in row_columns.values()]
        if dataset.truth is not None:
            line += [f"{v:.6g}" for v in dataset.truth[i].tolist()]
        writer.writerow(line + _stats_cells(stats, i))
    return buffer.getvalue()


def unit_posterior_csv(dataset, likelihood, stats: dict, level: float) -> str:
    """The per-unit table where rows are grouped in units (``Dataset.unit_index``): unit label, number of rows,
    post_mean, post_sd, interval bounds (and the natural-scale mean), one line per unit."""
    num_latent = stats["mean"].shape[1]
    suffixes = [""] if num_latent == 1 else [f"_{j}" for j in range(num_latent)]
    header = ["unit", "rows", *_stats_header(suffixes, level, likelihood, stats)]
    counts = torch.bincount(dataset.unit_index, minlength=dataset.num_units).tolist()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i, label in enumerate(dataset.units()):
        writer.writerow([label, counts[i], *_stats_cells(stats, i)])
    return buffer.getvalue()


def _save_array(path: Path, array: np.ndarray) -> None:
    def write(handle):
        np.save(handle, array)

    write_atomic(path, write)


def check_output_file(key: str, path: str, run, overwrite: bool) -> Path:
    """Where ``out=`` / ``draws_out=`` may write: never over the run's data files, never inside the run folder
    (except its own ``samples/``), and over an existing file only with ``overwrite=true``."""
    target = Path(path).expanduser().resolve()
    data_files = {
        Path(str(value)).expanduser().resolve()
        for value in (run.cfg.data.get("path"), run.cfg.data.get("truth_path"), run.dataset.source)
        if value
    }
    if target in data_files:
        raise UsageError(
            f"sample: {key}={path} is a data file of the run {run.run_dir}; almond sample never writes "
            "over a run's data (resume, evaluate and sample would refuse the changed data): choose "
            "another file"
        )
    if target.is_relative_to(run.run_dir) and not target.is_relative_to(run.folder.samples):
        raise UsageError(
            f"sample: {key}={path} is inside the run folder {run.run_dir}, which only almond train "
            f"writes; leave out= out to write into its {RunFolder.SAMPLES}/ folder, or choose a path "
            "outside it"
        )
    if target.exists() and not overwrite:
        raise UsageError(
            f"sample: {key}={path} exists; almond sample never replaces a file unless you add overwrite=true"
        )
    if target.is_dir():
        raise UsageError(f"sample: {key}={path} is a folder; give a file name")
    return target


def _output_path(out: str | None, run, default_name: str) -> Path:
    if out is not None:
        return Path(out).expanduser()
    return run.folder.new_output_folder(RunFolder.SAMPLES) / default_name


# ----- the command -------------------------------------------------------------------------------------------------
def sample(
    run_dir: Path,
    what: str | None = None,
    n: int = 10_000,
    out: str | None = None,
    draws_out: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    num_chains: int = 20,
    num_draws: int = 100,
    thin: int = 10,
    burn_in: int = 200,
    step_size: float | None = None,
    level: float = 0.9,
    device: str = "auto",
    threads: int | None = None,
) -> dict:
    """Runs ``almond sample`` and returns what it printed as numbers (see module docstring)."""
    if what is None:
        raise UsageError(
            "sample: what= is required: what=prior (draws of u = h(z)) or what=posterior "
            "(per-row posterior draws and shrinkage estimates)"
        )
    suffixes = (".npy", ".csv") if what == "prior" else (".csv",)
    if out is not None and Path(out).suffix.lower() not in suffixes:
        raise UsageError(f"sample: out={out} must end in {' or '.join(suffixes)} for what={what}")
    if draws_out is not None and (what != "posterior" or Path(draws_out).suffix.lower() != ".npy"):
        raise UsageError(f"sample: draws_out={draws_out} is for what=posterior and must end in .npy")
    run = load_run("sample", run_dir, device, threads)
    for key, path in (("out", out), ("draws_out", draws_out)):
        if path is not None:
            check_output_file(key, path, run, overwrite)
    if isinstance(run.model, MixedModel):  # one line per group and factor, with its id
        return _sample_mixed(run, what, n, out, seed, num_chains)
    if what == "prior":
        draws = prior_draws(
            run.model.decoder, int(run.cfg.latent_dim), n, torch.Generator().manual_seed(seed), run.device
        ).numpy()
        path = _output_path(out, run, "prior.npy")
        if path.suffix.lower() == ".csv":
            header = ",".join(["u"] if draws.shape[1] == 1 else [f"u{j}" for j in range(draws.shape[1])])
            text = io.StringIO()
            np.savetxt(text, draws, delimiter=",", header=header, comments="", fmt="%.6g")
            write_text_atomic(path, text.getvalue())
        else:
            _save_array(path, draws)
        result = {
            "what": "prior",
            "path": str(path),
            "n": n,
            "mean": draws.mean(0).tolist(),
            "sd": draws.std(0).tolist(),
        }
        print(f"{n} draws of u = h(z) from the learned latent distribution -> {path}")
        print(
            "mean "
            + ", ".join(f"{v:.4f}" for v in result["mean"])
            + "; sd "
            + ", ".join(f"{v:.4f}" for v in result["sd"])
        )
        return result
    settings = sampler_settings(run.cfg.sampler)  # the run's sampler: its method, precision and table
    if step_size is None:
        position = run.payload["position"]
        step_size = (
            langevin_step_size(settings, max(position["epoch"] - 1, 0))
            if position["phase"] != Phase.VAE
            else settings.step_size
        )
    chains = run.payload.get("chains")
    start = None
    if chains is not None:  # the training chains sit near the posterior already; tile them to num_chains
        trained = chains["positions"]
        start = trained[:, torch.arange(num_chains) % trained.shape[1]]
    x = run.dataset.x.to(run.device)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    grouped = run.dataset.unit_index is not None  # rows grouped in units: one posterior (and CSV line) per unit
    draws = posterior_draws(
        run.model,
        x,
        num_chains,
        num_draws,
        thin,
        burn_in,
        step_size,
        generator,
        start,
        settings=settings,
        unit_index=run.dataset.unit_index,
    )
    if not within_prior_range(draws):
        raise UsageError(
            f"sample: the Langevin chains diverged with step_size={step_size:.3g} (a draw is non-finite "
            f"or beyond |z| = {ESCAPE_BOUND:g}); "
            f"retry with a smaller step_size (for example {step_size / 10:.3g})"
        )
    stats = summarise(draws, level)
    likelihood = run.model.likelihood
    if likelihood.mean_name is not None:  # the rate or probability itself: E[exp(u) | x], E[sigmoid(u) | x]
        stats["natural_mean"] = likelihood.mean(draws.double()).mean(1)
    path = _output_path(out, run, "posterior.csv")
    write_text_atomic(path, (unit_posterior_csv if grouped else posterior_csv)(run.dataset, likelihood, stats, level))
    if draws_out is not None:
        _save_array(Path(draws_out).expanduser(), draws.numpy())
    result = {
        "what": "posterior",
        "path": str(path),
        "rows": int(draws.shape[0]),
        "draws_per_row": int(draws.shape[1]),
        "step_size": step_size,
        "level": level,
        "mean_interval_width": float((stats["upper"] - stats["lower"]).mean()),
        "started_from": "the run's persistent chains" if start is not None else "the encoder",
    }
    if run.dataset.truth is not None and not grouped:  # the truth is per row
        truth = run.dataset.truth.double()
        result.update(comparison(run.dataset, likelihood, stats["mean"]))
        result["coverage"] = float(((truth >= stats["lower"]) & (truth <= stats["upper"])).double().mean())
    result.update(posterior_convergence(draws, num_chains))
    print_posterior_summary(run, stats, result, num_chains, num_draws, thin, burn_in)
    return result


def _sample_mixed(run, what: str, n: int, out: str | None, seed: int, num_chains: int) -> dict:
    """``almond sample`` of a mixed-model run: each factor's law (what=prior) or every group's random effect given
    the data (what=posterior: one line per factor, group and term, with its id, R-hat and bulk ESS)."""
    if what == "prior":
        names, draws = law_draws(run.model, n, seed)
        path = _output_path(out, run, "prior.csv")
        if path.suffix.lower() == ".npy":
            _save_array(path, draws.numpy())
        else:
            text = io.StringIO()
            np.savetxt(text, draws.numpy(), delimiter=",", header=",".join(names), comments="", fmt="%.6g")
            write_text_atomic(path, text.getvalue())
        print(f"{n} draws of each factor's random-effect law (centred) -> {path}")
        return {"what": "prior", "path": str(path), "n": n, "columns": names}
    table = group_posteriors(run.model, run.dataset, num_chains=num_chains, seed=seed)
    path = _output_path(out, run, "posterior.csv")
    write_text_atomic(path, group_posterior_csv(table))
    result = {
        "what": "posterior",
        "path": str(path),
        "rows": len(table["rows"]),
        "max_rhat": table["max_rhat"],
        "min_ess_bulk": table["min_ess_bulk"],
    }
    print(
        f"posteriors of {len(table['rows'])} random effects (factor, group, term) -> {path}; largest R-hat "
        f"{table['max_rhat']:.3f}, smallest bulk ESS {table['min_ess_bulk']:.0f}"
    )
    if table["max_rhat"] > RHAT_ALARM:
        print(f"warning: the largest R-hat is above {RHAT_ALARM}: the chains disagree; rerun with more chains")
    return result


LOW_ESS = 100  # below this many effective draws a row's posterior sd and interval are themselves noisy
# The alarm for the largest R-hat over all rows: Vehtari et al.'s 1.01 is for one quantity, and the maximum over
# hundreds of rows of an estimate with sd ~0.005 (1,000 draws) passes 1.01 by chance; 1.05 does not.
RHAT_ALARM = 1.05


def posterior_convergence(draws: torch.Tensor, num_chains: int) -> dict[str, float]:
    """Bulk ESS and rank-normalised split-R-hat of each row's draws (the smallest over coordinates and the largest
    R-hat), summarised over rows: ``ess_bulk_min``, ``ess_bulk_median``, ``rhat_max``.

    Args:
        draws: (n, num_draws · C, P) as ``posterior_draws`` returns them (draw-major: index k · C + c).
        num_chains: C.
    """
    rows, total, width = draws.shape
    chains = draws.double().reshape(rows, total // num_chains, num_chains, width).permute(0, 2, 1, 3).numpy()
    ess, rhat = [], []
    for i in range(rows):
        ess.append(min(ess_bulk(chains[i, :, :, p]) for p in range(width)))
        rhat.append(max(rank_rhat(chains[i, :, :, p]) for p in range(width)))
    ess_values = torch.tensor(ess, dtype=torch.float64)
    return {
        "ess_bulk_min": float(ess_values.min()),
        "ess_bulk_median": float(ess_values.median()),
        "rhat_max": float(max(rhat)),
        "low_ess_rows": int((ess_values < LOW_ESS).sum()),
    }


def print_posterior_summary(
    run, stats: dict, result: dict, num_chains: int, num_draws: int, thin: int, burn_in: int
) -> None:
    """The shrinkage summary: a few rows, the spread of the estimates, and the MSE comparison if known."""
    console = Console(force_terminal=False, width=110)
    likelihood = run.model.likelihood
    x = run.dataset.x.double()
    values = likelihood.observations(x)
    console.print(
        f"posterior of u for {result['rows']} rows: {num_chains} chains x {num_draws} draws per row "
        f"(burn-in {burn_in} steps, thin {thin}, step size {result['step_size']:.3g}, started from "
        f"{result['started_from']}) -> {result['path']}"
    )
    console.print(
        f"effective sample size per row (bulk, Vehtari et al. 2021): min {result['ess_bulk_min']:.0f}, "
        f"median {result['ess_bulk_median']:.0f} of {result['draws_per_row']} draws; rank-normalised "
        f"split-R-hat max {result['rhat_max']:.3f}"
    )
    if result["low_ess_rows"]:
        console.print(
            f"almond: warning: {result['low_ess_rows']} row(s) have fewer than {LOW_ESS} effective draws, so "
            "their posterior sd and interval are noisy: raise num_draws or thin (or num_chains)"
        )
    if result["rhat_max"] > RHAT_ALARM:
        console.print(
            f"almond: warning: the chains of some rows disagree (R-hat {result['rhat_max']:.3f} > "
            f"{RHAT_ALARM}): "
            "raise burn_in and thin, or choose a step_size that lets them move (larger if they barely move, smaller if they diverge)"
        )
    level = result["level"]
    if stats["mean"].shape[1] == 1 and values.shape[1] == 1 and run.dataset.unit_index is None:
        scale = {"prob": " (u is a logit)", "rate": " (u is a log-rate)"}.get(likelihood.mean_name, "")
        table = Table(title=f"first rows{scale}")
        observed = _names(run.dataset, 1)
        for name in ("row", observed[0], "post_mean", "post_sd", f"{100 * level:g}% interval"):
            table.add_column(name, justify="right")
        rows = run.dataset.rows()
        for i in range(min(5, values.shape[0])):
            table.add_row(
                str(rows[i]),
                f"{float(values[i, 0]):.3f}",
                f"{float(stats['mean'][i, 0]):.3f}",
                f"{float(stats['sd'][i, 0]):.3f}",
                f"[{float(stats['lower'][i, 0]):.3f}, {float(stats['upper'][i, 0]):.3f}]",
            )
        console.print(table)
        if likelihood.noise_sd(x) is not None:
            console.print(
                f"shrinkage: the posterior means spread with sd {float(stats['mean'].std()):.3f}, the raw x "
                f"with sd {float(values.std()):.3f}; mean {100 * level:g}% interval width "
                f"{result['mean_interval_width']:.3f}"
            )
    if "mse_posterior_mean" in result:
        console.print(f"mean squared error against the true values ({result['rows']} rows):")
        labels = {
            "mse_posterior_mean": "posterior means (almond)",
            "mse_raw_x": "raw x",
            "mse_normal_eb": "normal empirical Bayes (James-Stein)",
        }
        for key, label in labels.items():
            if key in result:
                console.print(f"  {label:<40s} {result[key]:.4f}")
        console.print(f"  {100 * level:g}% interval coverage of the true values: {result['coverage']:.3f}")


COMMAND = Command(
    "sample",
    "run folder",
    "outputs/DATE/TIME",
    "Draws from a fitted run: what=prior writes n draws of u = h(z) to out (.npy or .csv); "
    "what=posterior writes per-row posterior mean, sd and a central interval (Langevin draws) to out "
    "(.csv).",
    ARGUMENTS,
    sample,
)
