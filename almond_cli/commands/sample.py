"""``almond sample <run folder> what=prior|posterior ...``: draws from a fitted model, without retraining.

- ``what=prior``: n draws of u = h(z), z ~ N(0, I_d), from the learned latent distribution, to ``.npy`` or ``.csv``.
- ``what=posterior``: for every data point, draws of u from p(u | x_i) under the fitted model by the same
  multi-chain Langevin sampler and target that trained it (``sampler.run`` under ``settings.build_target`` with the
  run's sampler settings: tabulated, fused, bf16; Qiu & Wang 2019, Section 3). By default MALA with each row's step
  tuned during warm-up (``langevin.adapt``), then drawn until every row has R-hat <= 1.01 and bulk ESS >= 400 or a
  cap stops it (``langevin.convergence``); ``step_size=`` runs the run's own method at a fixed step instead. The
  training rows start from the run's persistent chains; the held-out rows and the rows of a new file (``data=``)
  from draws of the encoder and the prior resampled by weight (``resampled_start``). A CSV with the posterior mean,
  sd, a central interval and the chain checks per row — the empirical-Bayes shrinkage estimates. Where the true latent values are known (a simulation, or
  ``data.truth_path``), the printed summary gives the mean squared error of the posterior means, and for a
  Gaussian likelihood also that of the raw x and of the normal empirical-Bayes (James–Stein-type) estimates.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ..atomic import write_atomic, write_text_atomic
from ..config import sampler_settings
from ..data.dataset import rejoin_heldout
from ..errors import UsageError
from ..langevin import adapt, sampler
from ..langevin.chains import ESCAPE_BOUND, within_prior_range
from ..langevin.convergence import ESS_TARGET, RHAT_TARGET, Convergence, passing, row_diagnostics, run_until_converged
from ..langevin.settings import SamplerSettings, build_target
from ..langevin.tabulated import TabulatedTarget
from ..model.mixed import MixedModel
from ..model.model import prior_draws, reparameterise, standard_normal_log_prob
from ..model.units import UnitRows
from ..tasks.empirical_bayes import fit_normal_prior, posterior_means
from ..tasks.mixed import group_posterior_csv, group_posteriors, groups_model, law_draws
from ..tasks.normal_means import row_noise_sd
from ..tasks.registry import read_new_rows
from ..training.position import Phase
from ..training.run_folder import RunFolder, load_run
from ..training.schedules import langevin_step_size
from .arguments import DEVICE, THREADS, Argument, Command, at_least, boolean, optional_int, optional_str, positive

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
    "num_draws": Argument(
        optional_int,
        None,
        lambda v: None if v is None or v >= 1 else f"must be >= 1 or null, got {v}",
        "draws kept per chain, an integer >= 1 (exactly that many); null: 200, and the chains of every row "
        "short of R-hat <= 1.01 and bulk ESS >= 400 run 2, 4, ... times longer (200 evenly spaced draws kept) "
        "until it passes, up to max_draws",
    ),
    "max_draws": Argument(
        int,
        6400,
        at_least(200),
        "when num_draws is null, the cap: no chain runs longer than max_draws · thin steps, an integer >= 200",
    ),
    "max_minutes": Argument(
        lambda text: None if text in ("null", "none", "") else float(text),
        None,
        lambda v: None if v is None or v > 0 else f"must be > 0 or null, got {v}",
        "when num_draws is null, no new block of draws starts after this many minutes; null: no time bound",
    ),
    "thin": Argument(int, 10, at_least(1), "Langevin steps between kept draws, an integer >= 1"),
    "burn_in": Argument(
        int,
        200,
        at_least(0),
        "Langevin steps before the first kept draw, an integer >= 0: the warm-up in which the step is tuned "
        "(>= 1 then)",
    ),
    "step_size": Argument(
        float,
        None,
        positive,
        "a fixed Langevin step size > 0, which switches tuning off (the run's own method, ULA or MALA, at this "
        "step); null: MALA with each row's step tuned during burn_in to acceptance 0.8, then fixed",
    ),
    "data": Argument(
        optional_str,
        None,
        help="a file of new rows with the columns the run was trained on (its data.columns, sd, id columns; "
        "data=file or glmm_file runs; a mixed run's formula columns, whose groups are new groups): their "
        "posteriors under the fitted prior, instead of the run's own rows",
    ),
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
def _largest(step_size: float | torch.Tensor) -> float:
    """The largest of one step or of per-row steps (what a tabulated target's grid is widened for)."""
    return float(step_size.max()) if isinstance(step_size, torch.Tensor) else float(step_size)


@dataclass
class _Chunk:
    """A chunk of rows (units) of ``PosteriorChains`` and where its chains are.

    Attributes:
        batch: (R, D) its data rows.
        units: (R,) each row's unit 0..B-1 in the chunk; None: every row its own unit (R = B).
        z: (B, C, d) its chains' positions; None until they are first drawn from the encoder.
        step_size: the chains' step: one number, or (B, 1, 1) per row once tuned; None before burn-in.
        first: the index of its first row (unit) among all.
    """

    batch: torch.Tensor
    units: torch.Tensor | None
    z: torch.Tensor | None
    step_size: float | torch.Tensor | None
    first: int

    @property
    def num_units(self) -> int:
        return self.batch.shape[0] if self.units is None else int(self.units.max()) + 1


class PosteriorChains:
    """The chains of every row (every unit) under the fitted model, in chunks of at most ``max_particles`` (row,
    chain) pairs, moved segment after segment by ``sampler.run`` under ``settings.build_target`` (the target
    training used: the tabulated decoder where ``settings.tabulate`` asks for it, its grid around the chains' range
    at the segment's start, widened for the segment's steps; else the fused MLP target in ``settings.precision``
    where the model allows it, else autograd), by ``settings.method`` (ULA or MALA). The chains persist between
    calls, so draws can be asked for block after block (``convergence.run_until_converged``).

    Args:
        model: the fitted ``LatentVariableModel`` (eval mode).
        x: (n, D) data.
        num_chains: C chains per row.
        generator: noise source (on x's device).
        start: (n, C', d) starting positions with C' >= C (e.g. the run's persistent chains); None starts
            from the encoder's q(z | x), drawn for a chunk when it first moves.
        max_particles: rows are processed in chunks of at most this many (row, chain) pairs.
        settings: the run's sampler settings (``config.sampler_settings``); the other fields (the step-size
            schedule, steps per update, chains) are training's and not read here.
        unit_index: (n,) each row's unit 0..U-1 (``start`` is then (U, C', d)); None: every row its own unit.
    """

    def __init__(
        self,
        model,
        x: torch.Tensor,
        num_chains: int,
        generator: torch.Generator,
        start: torch.Tensor | None = None,
        max_particles: int = 200_000,
        settings: SamplerSettings = SamplerSettings(),
        unit_index: torch.Tensor | None = None,
    ):
        self.model, self.num_chains, self.generator, self.settings = model, num_chains, generator, settings
        rows = max(1, max_particles // num_chains)
        unit_rows = None if unit_index is None else UnitRows(unit_index)
        self.num_units = x.shape[0] if unit_rows is None else unit_rows.num_units  # rows, or units of rows
        self.chunks: list[_Chunk] = []
        for first in range(0, self.num_units, rows):
            units = None  # every row its own unit
            if unit_rows is None:
                batch = x[first : first + rows]
            else:  # a chunk of units with all their rows
                picked, units = unit_rows.of(torch.arange(first, min(first + rows, unit_rows.num_units)))
                batch, units = x[picked.to(x.device)], units.to(x.device)
            z = None if start is None else start[first : first + rows, :num_chains].to(x.device)
            self.chunks.append(_Chunk(batch, units, z, None, first))
        self.accepted = torch.zeros((), dtype=torch.float64, device=x.device)  # MALA's acceptances, summed
        self.moves = 0  # (row, step) pairs behind ``accepted``

    def _positions(self, chunk: _Chunk) -> torch.Tensor:
        if chunk.z is None:
            with torch.no_grad():
                chunk.z = self.model.sample_posterior_approx(chunk.batch, self.num_chains, self.generator, chunk.units)
        return chunk.z

    def _segments(self, chunk: _Chunk, segments: list[int], keep: int) -> list[torch.Tensor]:
        """Runs ``segments`` (steps each) on ``chunk`` at its step size; returns u at the end of the last ``keep``
        segments, each (B, C, P) on CPU."""
        draws = []
        with self.model.frozen():
            for index, steps in enumerate(segments):
                z, step_size = self._positions(chunk), chunk.step_size
                target = build_target(
                    self.model, chunk.batch, z, self.settings, _largest(step_size), steps, chunk.units
                )
                kept, info = sampler.run(z, target, step_size, steps, steps - 1, self.generator, self.settings.method)
                chunk.z = kept[-1]
                if info.acceptance_rate is not None:
                    self.accepted = self.accepted + info.acceptance_rate.double() * steps * z.shape[0]
                    self.moves += steps * z.shape[0]
                if index >= len(segments) - keep:
                    draws.append(decode(self.model, target, chunk.z).cpu())
        return draws

    def burn_in(self, num_steps: int, step_size: float) -> None:
        """``num_steps`` steps of size ``step_size`` for every chunk, nothing kept."""
        for chunk in self.chunks:
            chunk.step_size = step_size
            if num_steps > 0:
                self._segments(chunk, [num_steps], 0)

    def tune(self, num_steps: int, step_size: float) -> None:
        """``num_steps`` MALA steps for every chunk, each row's step adapted from ``step_size`` to MALA's target
        acceptance (``adapt.warm_up``), nothing kept; the rows keep their tuned steps from then on."""
        for chunk in self.chunks:
            batch, units = chunk.batch, chunk.units

            def make_target(z, largest, steps, batch=batch, units=units):
                return build_target(self.model, batch, z, self.settings, largest, steps, units)

            with self.model.frozen():
                warm = adapt.warm_up(self._positions(chunk), make_target, step_size, num_steps, self.generator)
            chunk.z, chunk.step_size = warm.z, warm.step_size.to(warm.z.dtype).view(-1, 1, 1)

    def draw(self, num_draws: int, thin: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The next ``num_draws`` draws per chain, one every ``thin`` steps, of every row or of ``rows`` ((r,) long,
        increasing; units where rows are grouped): (n or r, num_draws · C, P), draw-major (index k · C + c), CPU
        float32. The other rows' chains stay where they are."""
        blocks = []
        for chunk in self.chunks:
            if rows is None:
                blocks.append(torch.cat(self._segments(chunk, [thin] * num_draws, num_draws), dim=1))
                continue
            local = rows[(rows >= chunk.first) & (rows < chunk.first + chunk.num_units)] - chunk.first
            if not len(local):
                continue
            part = self._part(chunk, local.to(chunk.batch.device))
            blocks.append(torch.cat(self._segments(part, [thin] * num_draws, num_draws), dim=1))
            chunk.z[local.to(chunk.z.device)] = part.z
        return torch.cat(blocks).float()

    @staticmethod
    def _part(chunk: _Chunk, local: torch.Tensor) -> _Chunk:
        """The chunk of ``chunk``'s rows (units) ``local``: its data rows, units numbered 0.., chains and steps."""
        batch, units, z, step_size = chunk.batch, chunk.units, chunk.z, chunk.step_size
        if units is None:
            part_batch, part_units = batch[local], None
        else:
            picked, part_units = UnitRows(units.cpu(), z.shape[0]).of(local.cpu())
            part_batch, part_units = batch[picked.to(batch.device)], part_units.to(batch.device)
        if isinstance(step_size, torch.Tensor):
            step_size = step_size[local]
        return _Chunk(part_batch, part_units, z[local], step_size, 0)

    def step_sizes(self) -> torch.Tensor:
        """(n,) each row's step size (units: (U,))."""
        return torch.cat(
            [
                chunk.step_size.flatten().double().cpu()
                if isinstance(chunk.step_size, torch.Tensor)
                else torch.full((chunk.num_units,), float(chunk.step_size))
                for chunk in self.chunks
            ]
        )

    def acceptance_rate(self) -> float | None:
        """MALA's fraction of accepted moves over every row and step drawn (and of a fixed step's burn-in; the tuning
        warm-up is not counted); None for ULA."""
        return float(self.accepted) / self.moves if self.moves else None


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
    groups rows in units) at one fixed ``step_size``, by ``PosteriorChains`` (see there for the arguments).

    Each chunk of rows in turn runs ``burn_in`` steps, then keeps one state every ``thin`` steps, ``num_draws``
    times, every such segment under its own ``build_target``.

    Returns:
        (n, num_draws · C, P) draws of u on CPU, float32; (U, num_draws · C, P) with units.
    """
    chains = PosteriorChains(model, x, num_chains, generator, start, max_particles, settings, unit_index)
    draws = []
    for chunk in chains.chunks:  # chunk by chunk, each burnt in then drawn (the order the generator serves them)
        chunk.step_size = step_size
        segments = ([burn_in] if burn_in > 0 else []) + [thin] * num_draws
        draws.append(torch.cat(chains._segments(chunk, segments, num_draws), dim=1))
    return torch.cat(draws).float()


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
    """Posterior means under the maximum-likelihood normal prior N(m, tau²) (``empirical_bayes.fit_normal_prior``,
    the ``normal_eb`` baseline of ``summary.json``): the shrinkage estimates ``mse_normal_eb`` scores.

    Args:
        x: (n,) measurements.
        sd: the noise sd, one number or (n,) per row.

    Returns:
        (n,) m + tau² / (tau² + sd_i²) (x_i − m).
    """
    sd = torch.as_tensor(sd, dtype=torch.float64)
    return posterior_means(fit_normal_prior(x, sd), x, sd)


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


def _stats_header(
    suffixes: list[str], level: float, likelihood, stats: dict, split: list[str] | None = None
) -> list[str]:
    """The posterior columns of each latent coordinate: post_mean, post_sd, the interval bounds (``q5``, ``q95`` at
    level 0.9) and, where the likelihood has one, the natural-scale posterior mean; then, where ``stats`` has them,
    the row's chain checks ``rhat`` (its largest rank-normalised split-R-hat over coordinates) and ``ess_bulk`` (its
    smallest bulk ESS), and ``split`` (``train`` or ``heldout``) where some rows were held out of training."""
    tail = 100 * (1 - level) / 2
    header = []
    for s in suffixes:
        header += [f"post_mean{s}", f"post_sd{s}", f"q{tail:g}{s}", f"q{100 - tail:g}{s}"]
        if "natural_mean" in stats:
            header.append(f"post_mean_{likelihood.mean_name}{s}")
    if "rhat" in stats:
        header += ["rhat", "ess_bulk"]
    return header + (["split"] if split is not None else [])


def _stats_cells(stats: dict, index: int, split: list[str] | None = None) -> list[str]:
    """Line ``index`` of the ``_stats_header`` columns."""
    cells = []
    for p in range(stats["mean"].shape[1]):
        cells += [f"{float(stats[key][index, p]):.6g}" for key in ("mean", "sd", "lower", "upper")]
        if "natural_mean" in stats:
            cells.append(f"{float(stats['natural_mean'][index, p]):.6g}")
    if "rhat" in stats:
        cells += [f"{float(stats['rhat'][index]):.4f}", f"{float(stats['ess_bulk'][index]):.0f}"]
    return cells + ([split[index]] if split is not None else [])


def posterior_csv(dataset, likelihood, stats: dict, level: float, split: list[str] | None = None) -> str:
    """The per-row table: row, observations, the likelihood's per-row columns under their names (``sd`` for
    gaussian_hetero), [truth], post_mean, post_sd, interval bounds, and for Poisson/Bernoulli the posterior mean of
    the rate exp(u) / probability sigmoid(u); rhat and ess_bulk, and the ``split`` of each row where given (see
    ``_stats_header``)."""
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
    header += _stats_header(suffixes, level, likelihood, stats, split)
    rows = dataset.rows()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i in range(x.shape[0]):
        line = [rows[i]] + ([ids[i]] if ids is not None else []) + [f"{v:.6g}" for v in values[i].tolist()]
        line += [f"{float(column[i]):.6g}" for column in row_columns.values()]
        if dataset.truth is not None:
            line += [f"{v:.6g}" for v in dataset.truth[i].tolist()]
        writer.writerow(line + _stats_cells(stats, i, split))
    return buffer.getvalue()


def unit_posterior_csv(dataset, likelihood, stats: dict, level: float, split: list[str] | None = None) -> str:
    """The per-unit table where rows are grouped in units (``Dataset.unit_index``): unit label, number of rows,
    post_mean, post_sd, interval bounds (and the natural-scale mean), rhat and ess_bulk (and each unit's ``split``
    where given), one line per unit."""
    num_latent = stats["mean"].shape[1]
    suffixes = [""] if num_latent == 1 else [f"_{j}" for j in range(num_latent)]
    header = ["unit", "rows", *_stats_header(suffixes, level, likelihood, stats, split)]
    counts = torch.bincount(dataset.unit_index, minlength=dataset.num_units).tolist()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i, label in enumerate(dataset.units()):
        writer.writerow([label, counts[i], *_stats_cells(stats, i, split)])
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
    num_draws: int | None = None,
    max_draws: int = 6400,
    max_minutes: float | None = None,
    thin: int = 10,
    burn_in: int = 200,
    step_size: float | None = None,
    level: float = 0.9,
    data: str | None = None,
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
    if data is not None and what != "posterior":
        raise UsageError(
            f"sample: data={data} gives new rows for what=posterior; what=prior draws from the prior alone"
        )
    if data is not None and not Path(data).expanduser().is_file():
        raise UsageError(f"sample: data={data} is not a file; give the file of new rows (the run's columns)")
    for key, path in (("out", out), ("draws_out", draws_out)):
        if path is not None:
            target = check_output_file(key, path, run, overwrite)
            if data is not None and target == Path(data).expanduser().resolve():
                raise UsageError(f"sample: {key}={path} is the data= file; choose another file to write")
    if isinstance(run.model, MixedModel):  # one line per group and factor, with its id
        return _sample_mixed(run, what, n, out, seed, num_chains, data)
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
    return _sample_posterior(
        run,
        out,
        draws_out,
        seed,
        num_chains,
        num_draws,
        max_draws,
        max_minutes,
        thin,
        burn_in,
        step_size,
        level,
        data,
    )


def _rows_to_sample(run, data: str | None, num_chains: int, generator: torch.Generator):
    """The rows (units) whose posteriors are drawn, where their chains start, and which are held out.

    Returns:
        (the data set: the run's training and held-out rows together (``rejoin_heldout``), or the new file's rows;
        (U, C, d) starting positions: the run's persistent chains tiled to C for training units, ``resampled_start``
        for the others; (U,) bool, True for a held-out unit; what the chains started from).
    """
    model = run.model
    if data is not None:
        dataset = read_new_rows(run.cfg, str(Path(data).expanduser()), "sample")
        if dataset.x.shape[1] != run.dataset.x.shape[1]:
            raise UsageError(
                f"sample: data={data} gives {dataset.x.shape[1]} values per row but the run was fitted to "
                f"{run.dataset.x.shape[1]}; the new file needs the run's columns"
            )
        start = resampled_start(model, dataset.x.to(run.device), num_chains, generator, dataset.unit_index)
        return (
            dataset,
            start,
            torch.zeros(dataset.num_units, dtype=torch.bool),
            "the encoder and the prior, resampled (new rows)",
        )
    dataset, source = rejoin_heldout(run.dataset)
    trained = run.dataset.num_units
    chains = run.payload.get("chains")
    if chains is not None:  # the training chains sit near the posterior already; tile them to num_chains
        positions = chains["positions"]
        train_start = positions[:, torch.arange(num_chains) % positions.shape[1]].to(run.device)
        started_from = "the run's persistent chains"
    else:
        x = run.dataset.x.to(run.device)
        train_start = resampled_start(model, x, num_chains, generator, run.dataset.unit_index)
        started_from = "the encoder and the prior, resampled"
    starts = [train_start]
    if run.dataset.heldout is not None:  # rows the fit never saw: no persistent chains
        held = run.dataset.heldout
        starts.append(resampled_start(model, held.x.to(run.device), num_chains, generator, held.unit_index))
        started_from += " (held-out rows: resampled from the encoder and the prior)"
    start = torch.cat(starts)[source.to(run.device)]
    return dataset, start, source >= trained, started_from


@torch.no_grad()
def resampled_start(
    model,
    x: torch.Tensor,
    num_chains: int,
    generator: torch.Generator,
    unit_index: torch.Tensor | None = None,
    candidates: int = 1000,
    max_particles: int = 200_000,
) -> torch.Tensor:
    """Starting positions for rows without persistent chains (held-out rows, a new file's rows), by sampling-
    importance-resampling: ``candidates`` draws per row, half from the encoder's q(z | x) and half from the prior
    N(0, I), weighted by p(x, z) / (q(z | x) + N(z; 0, I)) / 2 (a defensive mixture: the prior half covers what an
    encoder misses), and ``num_chains`` of them drawn by weight.

    Why: where the decoder is not monotone a posterior of z has several modes (two z with the same u = h(z)), and
    chains started in a minor one by the encoder stay there for good: on the batting data 29 of 140 held-out rows
    had R-hat 1.14 to 1.36 after 64,000 MALA steps. Resampled starts sit in the modes in proportion to their mass.

    Args:
        x: (n, D) rows; ``unit_index`` (n,) their units (None: every row its own unit).

    Returns:
        (U, num_chains, d) starting positions.
    """
    unit_rows = None if unit_index is None else UnitRows(unit_index.cpu())
    num_units = x.shape[0] if unit_rows is None else unit_rows.num_units
    step = max(1, max_particles // candidates)
    starts = []
    for first in range(0, num_units, step):
        units = None
        if unit_rows is None:
            batch = x[first : first + step]
        else:
            picked, units = unit_rows.of(torch.arange(first, min(first + step, num_units)))
            batch, units = x[picked.to(x.device)], units.to(x.device)
        mean, log_var = model.encode(batch, units, None if units is None else int(units.max()) + 1)
        half = candidates // 2
        prior = torch.randn(
            (mean.shape[0], candidates - half, mean.shape[1]), generator=generator, device=x.device, dtype=mean.dtype
        )
        z = torch.cat([reparameterise(mean, log_var, half, generator), prior], dim=1)  # (B, M, d)
        log_q = torch.distributions.Normal(mean.unsqueeze(1), (0.5 * log_var).exp().unsqueeze(1)).log_prob(z).sum(-1)
        log_mixture = torch.logaddexp(log_q, standard_normal_log_prob(z)) - math.log(2.0)
        log_weight = torch.nan_to_num(model.log_joint(batch, z, units) - log_mixture, nan=-math.inf)
        log_weight = torch.where(torch.isfinite(log_weight).any(1, keepdim=True), log_weight, 0.0)  # all -inf: uniform
        index = torch.multinomial(torch.softmax(log_weight.double(), dim=1), num_chains, True, generator=generator)
        starts.append(torch.gather(z, 1, index.unsqueeze(-1).expand(-1, -1, z.shape[-1])))
    return torch.cat(starts)


def draw_posterior(
    model,
    x: torch.Tensor,
    generator: torch.Generator,
    start: torch.Tensor | None,
    settings: SamplerSettings,
    unit_index: torch.Tensor | None = None,
    num_chains: int = ARGUMENTS["num_chains"].default,
    num_draws: int | None = ARGUMENTS["num_draws"].default,
    max_draws: int = ARGUMENTS["max_draws"].default,
    max_seconds: float | None = None,
    thin: int = ARGUMENTS["thin"].default,
    burn_in: int = ARGUMENTS["burn_in"].default,
    step_size: float | None = None,
    initial_step: float | None = None,
) -> tuple[torch.Tensor, Convergence, PosteriorChains]:
    """The draws of ``almond sample what=posterior``, its defaults those of the command.

    With ``step_size`` None, ``burn_in`` MALA steps tune each row's step from ``initial_step`` (``PosteriorChains.
    tune``; ``settings.method`` must then be ``"mala"``), else ``burn_in`` steps at ``step_size`` by
    ``settings.method``. Then with ``num_draws`` None, blocks of ``FIRST_DRAWS`` draws per chain until every row
    passes R-hat <= 1.01 and bulk ESS >= 400 (``convergence.run_until_converged``, up to ``max_draws`` draws'
    worth of steps per chain, or ``max_seconds``), else exactly ``num_draws`` draws per chain.

    Args:
        model, x, generator, start, settings, unit_index: as ``PosteriorChains`` takes them.

    Returns:
        (draws (n, draws · C, P) on CPU, the rows' ``Convergence``, the chains (their steps and acceptance)).
    """
    chains = PosteriorChains(model, x, num_chains, generator, start, settings=settings, unit_index=unit_index)
    if step_size is None:
        chains.tune(burn_in, initial_step)
    else:
        chains.burn_in(burn_in, step_size)
    if num_draws is None:  # draw until every row passes the checks, doubling the failing rows' chains, up to the cap
        draws, checked = run_until_converged(
            lambda picked, count, spacing: chains.draw(count, thin * spacing, picked),
            chains.num_units,
            num_chains,
            FIRST_DRAWS,
            max_draws,
            max_seconds=max_seconds,
        )
    else:
        draws = chains.draw(num_draws, thin)
        rhat, ess = row_diagnostics(draws, num_chains)
        spacing = np.ones(len(rhat), dtype=np.int64)
        checked = Convergence(rhat, ess, num_draws, spacing, 1, bool(passing(rhat, ess).all()), "num_draws")
    return draws, checked, chains


def _sample_posterior(
    run, out, draws_out, seed, num_chains, num_draws, max_draws, max_minutes, thin, burn_in, step_size, level, data
) -> dict:
    """``what=posterior``: see ``sample``."""
    settings = sampler_settings(run.cfg.sampler)  # the run's sampler: its method, precision and table
    tune = step_size is None
    if tune and burn_in < 1:
        raise UsageError(
            "sample: burn_in=0 leaves no warm-up to tune the step size in; give burn_in >= 1, or a fixed step_size=..."
        )
    if num_draws is None and max_draws < FIRST_DRAWS:
        raise UsageError(
            f"sample: max_draws={max_draws} is below the first block of {FIRST_DRAWS} draws per chain; raise "
            f"max_draws, or give num_draws=N for exactly N draws per chain"
        )
    if tune:  # MALA, whose acceptance rate the step is tuned to, from the run's final training step
        position = run.payload["position"]
        initial_step = (
            langevin_step_size(settings, max(position["epoch"] - 1, 0))
            if position["phase"] != Phase.VAE
            else settings.step_size
        )
        settings = replace(settings, method="mala")
    else:
        initial_step = None
    generator = torch.Generator(device=run.device).manual_seed(seed)
    dataset, start, heldout, started_from = _rows_to_sample(run, data, num_chains, generator)
    grouped = dataset.unit_index is not None  # rows grouped in units: one posterior (and CSV line) per unit
    draws, checked, chains = draw_posterior(
        run.model,
        dataset.x.to(run.device),
        generator,
        start,
        settings,
        unit_index=dataset.unit_index,
        num_chains=num_chains,
        num_draws=num_draws,
        max_draws=max_draws,
        max_seconds=None if max_minutes is None else 60.0 * max_minutes,
        thin=thin,
        burn_in=burn_in,
        step_size=step_size if not tune else None,
        initial_step=initial_step if tune else None,
    )
    steps = chains.step_sizes()
    if not within_prior_range(draws):
        largest = float(steps.max())
        raise UsageError(
            f"sample: the Langevin chains diverged with step_size={largest:.3g} (a draw is non-finite "
            f"or beyond |z| = {ESCAPE_BOUND:g}); "
            f"retry with a smaller step_size (for example {largest / 10:.3g})"
        )
    stats = summarise(draws, level)
    stats["rhat"], stats["ess_bulk"] = torch.from_numpy(checked.rhat), torch.from_numpy(checked.ess_bulk)
    likelihood = run.model.likelihood
    if likelihood.mean_name is not None:  # the rate or probability itself: E[exp(u) | x], E[sigmoid(u) | x]
        stats["natural_mean"] = likelihood.mean(draws.double()).mean(1)
    split = ["heldout" if flag else "train" for flag in heldout.tolist()] if bool(heldout.any()) else None
    path = _output_path(out, run, "posterior.csv")
    table = (unit_posterior_csv if grouped else posterior_csv)(dataset, likelihood, stats, level, split)
    write_text_atomic(path, table)
    if draws_out is not None:
        _save_array(Path(draws_out).expanduser(), draws.numpy())
    ess_values = torch.from_numpy(checked.ess_bulk)
    result = {
        "what": "posterior",
        "path": str(path),
        "rows": int(draws.shape[0]),
        "heldout_rows": int(heldout.sum()),
        "new_rows": data is not None,
        "draws_per_row": int(draws.shape[1]),
        "draws_per_chain": checked.draws_per_chain,
        "longest_chain": checked.longest_chain,
        "longer_rows": int((checked.spacing > 1).sum()),
        "tuned": tune,
        "step_size": float(steps.median()),
        "step_size_min": float(steps.min()),
        "step_size_max": float(steps.max()),
        "acceptance_rate": chains.acceptance_rate(),
        "level": level,
        "mean_interval_width": float((stats["upper"] - stats["lower"]).mean()),
        "started_from": started_from,
        "rhat_max": checked.rhat_max,
        "ess_bulk_min": checked.ess_bulk_min,
        "ess_bulk_median": float(ess_values.median()),
        "low_ess_rows": int((ess_values < LOW_ESS).sum()),
        "failing_rows": int(((torch.from_numpy(checked.rhat) > RHAT_TARGET) | ~(ess_values >= ESS_TARGET)).sum()),
        "converged": checked.converged,
        "stopped_by": checked.stopped_by,
        "checks": checked.checks,
    }
    trained_rows = ~heldout
    if dataset.truth is not None and not grouped:  # the truth is per row: scored on the training rows as before
        truth = run.dataset.truth.double()
        mean, lower, upper = (stats[key][trained_rows] for key in ("mean", "lower", "upper"))
        result.update(comparison(run.dataset, likelihood, mean))
        result["coverage"] = float(((truth >= lower) & (truth <= upper)).double().mean())
        if bool(heldout.any()):
            held_truth = dataset.truth[heldout].double()
            result["heldout_mse_posterior_mean"] = float((stats["mean"][heldout] - held_truth).square().mean())
    print_posterior_summary(dataset, likelihood, stats, result, num_chains, num_draws, max_draws, thin, burn_in)
    return result


def _sample_mixed(run, what: str, n: int, out: str | None, seed: int, num_chains: int, data: str | None) -> dict:
    """``almond sample`` of a mixed-model run: each factor's law (what=prior) or every group's random effect given
    the data (what=posterior: one line per factor, group and term, with its id, R-hat and bulk ESS). The held-out
    groups (``data.holdout_fraction``) follow the training groups, marked in a ``split`` column; with ``data=`` a
    new table's groups instead. Groups the fit did not see are new draws from the fitted laws: their posteriors
    are under those laws given their own rows (``tasks.mixed.groups_model``)."""
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
    split = None
    if data is not None:  # a new table's groups, under the fitted laws
        new = read_new_rows(run.cfg, str(Path(data).expanduser()), "sample", run.dataset)
        table = group_posteriors(groups_model(run.model, new, seed), new, num_chains=num_chains, seed=seed)
        which = f"the {new.num_points} rows of {data}"
    else:
        table = group_posteriors(run.model, run.dataset, num_chains=num_chains, seed=seed)
        which = "the training rows"
        held = run.dataset.heldout
        if held is not None:  # groups kept out of training: new draws from the fitted laws, given their rows
            other = group_posteriors(groups_model(run.model, held, seed), held, num_chains=num_chains, seed=seed)
            split = ["train"] * len(table["rows"]) + ["heldout"] * len(other["rows"])
            table = {
                "rows": table["rows"] + other["rows"],
                "max_rhat": max(table["max_rhat"], other["max_rhat"]),
                "min_ess_bulk": min(table["min_ess_bulk"], other["min_ess_bulk"]),
            }
            which += f" and the {held.num_points} held-out rows"
    path = _output_path(out, run, "posterior.csv")
    write_text_atomic(path, group_posterior_csv(table, split))
    result = {
        "what": "posterior",
        "path": str(path),
        "rows": len(table["rows"]),
        "heldout_rows": split.count("heldout") if split is not None else 0,
        "max_rhat": table["max_rhat"],
        "min_ess_bulk": table["min_ess_bulk"],
    }
    print(
        f"posteriors of {len(table['rows'])} random effects (factor, group, term) given {which} -> {path}; "
        f"largest R-hat {table['max_rhat']:.3f}, smallest bulk ESS {table['min_ess_bulk']:.0f}"
    )
    if table["max_rhat"] > RHAT_ALARM:
        print(f"warning: the largest R-hat is above {RHAT_ALARM}: the chains disagree; rerun with more chains")
    return result


LOW_ESS = 100  # below this many effective draws a row's posterior sd and interval are themselves noisy
# With a fixed num_draws, the alarm for the largest R-hat over all rows: Vehtari et al.'s 1.01 is for one quantity,
# and the maximum over hundreds of rows of an estimate with sd ~0.005 (1,000 draws) passes 1.01 by chance; 1.05
# does not. Without num_draws, sample draws until every row has R-hat <= RHAT_TARGET and ESS >= ESS_TARGET.
RHAT_ALARM = 1.05
# Draws kept per chain when drawing until the checks pass. The split-R-hat scatters about 1 with sd about
# 0.23 / (effective draws per chain) for 20 chains (40 half-chains: sqrt(2 / 39) / N), and the largest over
# thousands of rows sits 3.5 sd out: with 100 kept draws and chains a little autocorrelated that is 1.01 itself (the
# worked example's 2,000 rows reached 1.010 only on a second check), and a row failing by that noise alone would
# run on to the cap, since halving keeps the number of draws; 200 halves the noise.
FIRST_DRAWS = 200


def print_posterior_summary(
    dataset,
    likelihood,
    stats: dict,
    result: dict,
    num_chains: int,
    num_draws: int | None,
    max_draws: int,
    thin: int,
    burn_in: int,
) -> None:
    """What was drawn and how (tuned steps, acceptance), whether the chains passed their checks (and a plain warning
    where they did not), a few rows, the spread of the estimates, and the MSE comparison if known."""
    console = Console(force_terminal=False, width=110)
    x = dataset.x.double()
    values = likelihood.observations(x)
    rows = f"{result['rows']} rows" + (f" ({result['heldout_rows']} held out)" if result["heldout_rows"] else "")
    if result["tuned"]:
        how = (
            f"MALA, each row's step tuned in {burn_in} warm-up steps to acceptance {adapt.TARGET_ACCEPTANCE}: "
            f"steps {result['step_size_min']:.3g} to {result['step_size_max']:.3g} (median {result['step_size']:.3g})"
        )
    else:
        how = f"burn-in {burn_in} steps, step size {result['step_size']:.3g}"
    if result["acceptance_rate"] is not None:
        how += f", acceptance {result['acceptance_rate']:.3f} while drawing"
    console.print(
        f"posterior of u for {rows}: {num_chains} chains x {result['draws_per_chain']} draws per row ({how}; "
        f"thin {thin}; started from {result['started_from']}) -> {result['path']}"
    )
    if result["longer_rows"]:
        console.print(
            f"the chains of {result['longer_rows']} row(s) ran longer to pass the checks, up to "
            f"{result['longest_chain']} draws' worth of steps ({result['longest_chain'] * thin} steps), keeping "
            f"{result['draws_per_chain']} evenly spaced draws"
        )
    console.print(
        f"effective sample size per row (bulk, Vehtari et al. 2021): min {result['ess_bulk_min']:.0f}, "
        f"median {result['ess_bulk_median']:.0f} of {result['draws_per_row']} draws; rank-normalised "
        f"split-R-hat max {result['rhat_max']:.3f}"
    )
    if num_draws is None:  # drawn until the checks passed, or a cap stopped it
        if result["converged"]:
            console.print(
                f"checks passed: every row has R-hat <= {RHAT_TARGET} and bulk ESS >= {ESS_TARGET} "
                f"(after {result['checks']} check(s))"
            )
        else:
            cap = (
                f"max_draws={max_draws} draws per chain"
                if result["stopped_by"] == "max_draws"
                else "the time bound max_minutes"
            )
            console.print(
                f"almond: warning: {cap} stopped the sampling before the chains passed their checks: "
                f"{result['failing_rows']} row(s) have R-hat > {RHAT_TARGET} or bulk ESS < {ESS_TARGET} (max "
                f"R-hat {result['rhat_max']:.3f}, min ESS {result['ess_bulk_min']:.0f}; the CSV's rhat and "
                "ess_bulk columns say which): their posterior summaries are not to be trusted. Raise max_draws "
                "(or thin, or num_chains)"
            )
    else:  # a fixed number of draws: the alarms of a chosen length
        if result["low_ess_rows"]:
            console.print(
                f"almond: warning: {result['low_ess_rows']} row(s) have fewer than {LOW_ESS} effective draws, so "
                "their posterior sd and interval are noisy: raise num_draws or thin (or num_chains), or leave "
                "num_draws out to draw until the checks pass"
            )
        if result["rhat_max"] > RHAT_ALARM:
            console.print(
                f"almond: warning: the chains of some rows disagree (R-hat {result['rhat_max']:.3f} > "
                f"{RHAT_ALARM}): raise burn_in and thin, or choose a step_size that lets them move (larger if "
                "they barely move, smaller if they diverge), or leave step_size out to tune it"
            )
    level = result["level"]
    if stats["mean"].shape[1] == 1 and values.shape[1] == 1 and dataset.unit_index is None:
        scale = {"prob": " (u is a logit)", "rate": " (u is a log-rate)"}.get(likelihood.mean_name, "")
        table = Table(title=f"first rows{scale}")
        observed = _names(dataset, 1)
        for name in ("row", observed[0], "post_mean", "post_sd", f"{100 * level:g}% interval"):
            table.add_column(name, justify="right")
        labels = dataset.rows()
        for i in range(min(5, values.shape[0])):
            table.add_row(
                str(labels[i]),
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
        trained = result["rows"] - result["heldout_rows"]
        console.print(f"mean squared error against the true values ({trained} training rows):")
        labels = {
            "mse_posterior_mean": "posterior means (almond)",
            "mse_raw_x": "raw x",
            "mse_normal_eb": "normal empirical Bayes (James-Stein)",
        }
        for key, label in labels.items():
            if key in result:
                console.print(f"  {label:<40s} {result[key]:.4f}")
        console.print(f"  {100 * level:g}% interval coverage of the true values: {result['coverage']:.3f}")
        if "heldout_mse_posterior_mean" in result:
            console.print(
                f"  held-out rows ({result['heldout_rows']}): posterior means (almond) "
                f"{result['heldout_mse_posterior_mean']:.4f}"
            )


COMMAND = Command(
    "sample",
    "run folder",
    "outputs/DATE/TIME",
    "Draws from a fitted run: what=prior writes n draws of u = h(z) to out (.npy or .csv); "
    "what=posterior writes per-row posterior mean, sd, a central interval and the chains' rhat and ess_bulk to "
    "out (.csv): MALA with tuned steps, drawn until every row has R-hat <= 1.01 and bulk ESS >= 400 (up to "
    "max_draws), for the training and held-out rows, or the rows of a new file (data=).",
    ARGUMENTS,
    sample,
)
