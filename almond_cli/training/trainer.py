"""``train(cfg, run_dir) -> summary``: the VAE warm start, then ALMOND, written into a run folder.

The loop is a small state machine over (phase, epoch, batch) so that a checkpoint taken after any update
continues bitwise-exactly: the position, the data order of the epoch in progress, the persistent chains,
every optimiser and every random generator are saved together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..atomic import write_text_atomic
from ..config import AUTO, sampler_settings, validate
from ..data.dataset import check_same_data
from ..langevin.chains import ESCAPE_BOUND, PersistentChains
from ..model.units import UnitRows
from ..tasks.registry import build_dataset, task_for
from . import checkpoint as ckpt
from . import phases
from .baselines import fit_baselines
from .build import build_model
from .chain_checks import ChainTrajectory, periodic_rhat
from .collapse import repair_collapsed_warm_start
from .console import ProgressReporter, report_end
from .distributed import DataParallel, local_processes
from .loggers import NullLogger, build_logger
from .position import Phase, Position
from .resume import effective_config
from .run_folder import RunFolder
from .run_lock import RunFolderLock, held_here, record_holder
from .runtime import configure_process, describe_threads, pick_device, seed_streams
from .schedules import AlmondOptimisers, langevin_step_size
from .scoring import precision_record, summarise
from .stopping import (
    CAP,
    FIXED,
    NO_GAIN,
    ProgressChecks,
    auto_settings,
    check_due,
    epoch_limit,
    evaluate_check,
    still_improving_message,
)
from .warm_start import warm_start_config

log = logging.getLogger("almond")


class DivergenceError(RuntimeError):
    """Training produced non-finite numbers; the message says where and what to change."""


class Interrupted(Exception):
    """A stop signal arrived; a checkpoint was written. ``signal_number`` is the signal received."""

    def __init__(self, signal_number: int, checkpoint_path: Path):
        super().__init__(f"stopped by signal {signal_number}; checkpoint {checkpoint_path}")
        self.signal_number = signal_number
        self.checkpoint_path = checkpoint_path


class StoppedBeforeTraining(Exception):
    """A stop signal arrived while the run was starting, before it had a checkpoint: nothing to keep."""

    def __init__(self, signal_number: int):
        super().__init__(f"stopped by signal {signal_number} before training began")
        self.signal_number = signal_number


_STARTUP_SIGNAL: list[int] = []  # a stop signal that arrived before the training loop took over


def defer_stop_signals() -> None:
    """From now until a run's loop takes over, SIGINT and SIGTERM are remembered instead of killing the process
    mid-way through making the run folder; ``TrainingRun.run`` (or ``pending_stop_signal``) acts on them. A second
    signal before then (a start-up that takes long, Ctrl-C pressed again) exits at once."""

    def remember(signal_number, _frame) -> None:
        if _STARTUP_SIGNAL:
            raise SystemExit(128 + signal_number)
        _STARTUP_SIGNAL.append(signal_number)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, remember)


def pending_stop_signal() -> int | None:
    """The first stop signal ``defer_stop_signals`` remembered (taken: it is acted on once), or None."""
    if not _STARTUP_SIGNAL:
        return None
    signal_number = _STARTUP_SIGNAL[0]
    _STARTUP_SIGNAL.clear()
    return signal_number


def truncate_metrics(path: Path, position: Position, source: Path | None = None) -> None:
    """Keeps the metrics lines of the epochs a checkpoint has finished (those whose ``step`` it has reached),
    once each, so a resume neither repeats nor skips an epoch; a line cut off by a kill is dropped too. With
    ``source``, those lines of another run's ``metrics.jsonl`` (a warm start's) become ``path``."""
    source = path if source is None else source
    if not source.exists():
        return
    by_step: dict[int, str] = {}
    for line in source.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step")
        if isinstance(step, int) and step <= position.global_step:
            by_step[step] = line + "\n"  # a later line for the same update replaces an earlier one
    write_text_atomic(path, "".join(by_step[step] for step in sorted(by_step)))


class TrainingRun:
    """Everything one run holds, and the loop that advances it."""

    def __init__(self, cfg, run_dir: Path, task=None):
        self.cfg = cfg
        self.sampler = sampler_settings(cfg.sampler)
        self.run_dir = Path(run_dir)
        self.dist = DataParallel()  # data-parallel hooks; all no-ops in a single process
        self.device = self.dist.device(pick_device(cfg.device))
        streams = seed_streams(cfg.seed)
        self.dataset = build_dataset(cfg.data, streams["data"])
        self.data_fingerprint = self.dataset.fingerprint()
        torch.manual_seed(streams["init"])
        self.model = build_model(cfg, self.dataset).to(self.device)
        self.dist.broadcast_parameters(self.model)
        # This rank's units and their rows (all of them in one process); unit_index None: every row its own unit.
        x, self.unit_index = self.dist.shard_units(self.dataset.x, self.dataset.unit_index)
        self.x = x.to(self.device)
        self.unit_rows = None if self.unit_index is None else UnitRows(self.unit_index)
        self.num_units = self.x.shape[0] if self.unit_rows is None else self.unit_rows.num_units
        self.vae_optimiser = torch.optim.Adam(self.model.parameters(), lr=cfg.schedule.vae_lr)
        self.almond_optimisers = AlmondOptimisers(self.model.generative_parameters, cfg.schedule)
        self.dist.average_gradients_before_step(
            self.vae_optimiser, self.almond_optimisers.adam, self.almond_optimisers.sgd
        )
        self.dist.average_buffers_after_step(self.model, self.vae_optimiser)  # ALMOND runs in eval mode: no change
        self.noise_generator = torch.Generator(device=self.device).manual_seed(self.dist.rank_seed(streams["noise"]))
        self.order_generator = torch.Generator().manual_seed(self.dist.rank_seed(streams["order"]))
        self.chains: PersistentChains | None = None
        self.trajectory = ChainTrajectory(int(cfg.diagnostics.rhat_points), int(cfg.diagnostics.trajectory_epochs))
        self.order: torch.Tensor | None = None
        self.position = Position()
        self.task = task if task is not None else task_for(self.dataset)  # a baseline child may share its parent's
        # The progress checks (training/stopping.py) score the held-out rows, else the training rows.
        self.check_rows_name = "held-out" if self.dataset.heldout is not None else "training"
        window = int(auto_settings(cfg.schedule)["window"])
        self.checks = {Phase.VAE: ProgressChecks(window), Phase.ALMOND: ProgressChecks(window)}
        self.vae_metrics: dict = {}
        self.vae_snapshot: dict | None = None
        # schedule.batch_size counts units: a batch is a set of units with all their rows.
        size = self.dist.local_batch_size(cfg.schedule.batch_size or self.dataset.num_units)
        self.batch_size = min(size, self.num_units)
        self.num_batches = math.ceil(self.num_units / self.batch_size)
        self.logger: NullLogger = NullLogger()
        self.stop_signal: int | None = None
        self.last_save_time = time.monotonic()
        self.folder = RunFolder(self.run_dir)

    # ----- checkpoint state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config_yaml": OmegaConf.to_yaml(self.cfg, resolve=True),
            "position": self.position.to_state(),
            "model": self.model.state_dict(),
            "vae_optimiser": self.vae_optimiser.state_dict(),
            "almond_optimisers": self.almond_optimisers.state_dict(),
            "chains": None if self.chains is None else self.chains.state_dict(),
            "trajectory": self.trajectory.state_dict(),
            "order": self.order,
            "rng": {
                "noise": self.noise_generator.get_state(),
                "order": self.order_generator.get_state(),
                "torch": torch.get_rng_state(),
            },
            "vae_metrics": self.vae_metrics,
            "vae_snapshot": self.vae_snapshot,
            "progress_checks": {phase.value: checks.state_dict() for phase, checks in self.checks.items()},
            "num_batches": self.num_batches,
            "data": self.data_fingerprint,
            # the thread count this run computes with: a resume without threads= keeps it, so the resumed run stays
            # bitwise the run it continues even when the machine's load has changed (runtime.choose_threads)
            "threads": torch.get_num_threads(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.position = Position.from_state(state["position"])
        self.model.load_state_dict(state["model"])
        self.vae_optimiser.load_state_dict(state["vae_optimiser"])
        self.almond_optimisers.load_state_dict(state["almond_optimisers"])
        self.chains = (
            None if state["chains"] is None else PersistentChains.from_state_dict(state["chains"], self.device)
        )
        self.trajectory = ChainTrajectory.from_state_dict(
            state.get("trajectory"), self.trajectory.points, self.trajectory.window
        )
        self.order = state["order"]
        self.noise_generator.set_state(state["rng"]["noise"])
        self.order_generator.set_state(state["rng"]["order"])
        torch.set_rng_state(state["rng"]["torch"])
        self.vae_metrics = state["vae_metrics"]
        self.vae_snapshot = state["vae_snapshot"]
        saved_checks = state.get("progress_checks") or {}  # none in a checkpoint written before the checks
        window = int(auto_settings(self.cfg.schedule)["window"])
        self.checks = {
            phase: ProgressChecks.from_state_dict(saved_checks.get(phase.value), window) for phase in self.checks
        }

    def resume_from(self, state: dict) -> None:
        """Continues from ``state``: restores everything and cuts ``metrics.jsonl`` back to its epochs."""
        check_same_data(state.get("data"), self.dataset, "resume")
        state = self.dist.local_state(state)  # this rank's chains and generators; refuses another world size
        if state.get("num_batches") != self.num_batches:
            raise ckpt.CheckpointError(
                f"the checkpoint was written with {state.get('num_batches')} batches per epoch, this run has "
                f"{self.num_batches}; resume with the checkpoint's schedule.batch_size and data"
            )
        self.load_state_dict(state)
        position = self.position
        vae_epochs = self.cfg.schedule.vae_epochs
        if (
            position.phase in (Phase.ALMOND, Phase.DONE)
            and vae_epochs != AUTO
            and position.vae_epochs_done != vae_epochs
        ):
            raise ckpt.CheckpointError(
                f"schedule.vae_epochs: the VAE phase of this run is over after {position.vae_epochs_done} epochs "
                f"and cannot be changed to {self.cfg.schedule.vae_epochs}; drop schedule.vae_epochs from the command"
            )
        if position.phase == Phase.DONE and not self._phase_over(Phase.ALMOND):  # a longer schedule extends the run
            position.phase = Phase.ALMOND
            position.still_improving = None
        if self.dist.is_writer:
            truncate_metrics(self.folder.metrics, position)

    def start_from_warm_start(self, path: Path, state: dict) -> None:
        """Starts the ALMOND phase from another run's VAE checkpoint ``state`` (``warm_start=``, see
        ``warm_start.py``): its model, position, generators, VAE metrics and time, with this run's own ALMOND
        optimisers (their settings may differ), and its VAE lines of ``metrics.jsonl``."""
        check_same_data(state.get("data"), self.dataset, "warm_start")
        state = self.dist.local_state(state, "warm_start")
        self.load_state_dict({**state, "almond_optimisers": self.almond_optimisers.state_dict()})
        if self.dist.is_writer and RunFolder.is_in_checkpoints(path):  # the VAE's epochs, from its run folder
            self.run_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(self.folder.metrics, self.position, source=RunFolder.of_checkpoint(path).metrics)
        self.save(vae=True)  # this run's own: what almond evaluate's VAE row and a resume from it read
        log.info("warm start: the VAE phase (%d epochs) of %s", self.position.vae_epochs_done, path)

    def save(self, vae: bool = False) -> Path:
        """Writes the run's newest checkpoint (``RunFolder.save``: a numbered one, up to ``checkpoint.keep`` older
        ones kept, and ``last.pt``; with ``vae`` also ``vae.pt``); returns the path of ``last.pt``."""
        state = self.dist.gather_state(self.state_dict())  # every rank's chains; None except on rank 0
        if state is not None:
            self.folder.save(state, self.position.global_step, self.position.phase, self.cfg.checkpoint.keep, vae=vae)
        self.last_save_time = time.monotonic()
        return self.folder.last

    # ----- the loop ---------------------------------------------------------------------------------------
    def _epochs_in(self, phase: Phase) -> int:
        """The most epochs ``phase`` runs: its fixed count, or under auto its cap."""
        return epoch_limit(self.cfg.schedule, phase.value)

    def _auto(self, phase: Phase) -> bool:
        return self.cfg.schedule[f"{phase.value}_epochs"] == AUTO

    def _phase_over(self, phase: Phase) -> bool:
        """Whether ``phase`` has run its epochs, or under auto its checks say it is done (training/stopping.py)."""
        return self.position.epoch >= self._epochs_in(phase) or (self._auto(phase) and self.checks[phase].done())

    def _stopped_because(self, phase: Phase) -> str:
        if not self._auto(phase):
            return FIXED
        return NO_GAIN if self.checks[phase].done() else CAP

    def _progress_check(self) -> dict:
        """The check due after the epoch that just ended (``stopping.check_due``), as metrics fields; {} if none."""
        position, schedule = self.position, self.cfg.schedule
        done = position.epoch + 1
        if position.phase == Phase.DONE or not check_due(schedule, position.phase.value, done):
            return {}
        log_lik, mc_variance = evaluate_check(self.task, self.model, self.dataset, self.cfg, self.device)
        checks = self.checks[position.phase]
        check = checks.add(log_lik, done, mc_variance)
        if check.significant and position.phase == Phase.ALMOND and self._auto(Phase.ALMOND):
            self.almond_optimisers.restart_average()  # averaging under auto covers the plateau since the last gain
        halvings = int(auto_settings(schedule)["halvings"])
        if position.phase == Phase.ALMOND and self._auto(Phase.ALMOND) and checks.done() and checks.halvings < halvings:
            checks.halve()  # a plateau met by a smaller rate (the checks' rate_factor, read at every update)
            self.reporter.note(
                f"almond epoch {done}: {checks.window} checks without a gain above its standard error; "
                f"the learning rate halved ({checks.halvings} of {halvings})"
            )
        fields = {"check_nll": check.nll, "check_nll_se": check.nll_se}
        if math.isfinite(check.gain):
            fields.update(check_gain=check.gain, check_gain_se=check.gain_se)
        return fields

    def _batch_indices(self) -> torch.Tensor:
        """The units of the current batch: an epoch permutes this rank's units."""
        if self.order is None:
            self.order = torch.randperm(self.num_units, generator=self.order_generator)
        start = self.position.batch * self.batch_size
        return self.order[start : start + self.batch_size]

    def _update(self) -> tuple[torch.Tensor, dict, dict]:
        """One parameter update of the current phase; returns (loss, diagnostics, record fields)."""
        position, cfg = self.position, self.cfg
        indices = self._batch_indices()
        units = None  # every row its own unit: the batch's rows are its units
        if self.unit_rows is None:
            x = self.x[indices.to(self.device)]
        else:
            rows, units = self.unit_rows.of(indices)
            x, units = self.x[rows.to(self.device)], units.to(self.device)
        if self.dataset.transform is not None:  # e.g. dynamic binarisation, drawn from the seeded noise stream
            x = self.dataset.transform(x, self.noise_generator)
        if position.phase == Phase.VAE:
            loss = phases.vae_update(
                self.model, self.vae_optimiser, x, cfg.schedule.vae_draws, self.noise_generator, units=units
            )
            return loss, {}, {"lr": float(cfg.schedule.vae_lr)}
        step_size = langevin_step_size(self.sampler, position.epoch)
        rate_factor = self.checks[Phase.ALMOND].rate_factor  # 0.5 per plateau the auto checks met by halving
        optimiser = self.almond_optimisers.for_epoch(position.epoch, rate_factor)
        loss, info = phases.almond_update(
            self.model, optimiser, self.chains, indices, x, step_size, self.sampler, self.noise_generator, units=units
        )
        self.almond_optimisers.after_step(position.epoch)
        diagnostics = {name: value for name, value in info._asdict().items() if value is not None}
        lr = self.almond_optimisers.learning_rate(position.epoch, rate_factor)
        return loss, diagnostics, {"lr": lr, "step_size": step_size}

    def _end_epoch(self, loss_mean: float, diagnostics: dict, fields: dict) -> None:
        position = self.position
        chains_healthy = self.chains is None or self.chains.healthy()
        loss_mean, diagnostics = self.dist.average_epoch(loss_mean, diagnostics, chains_healthy)
        if not math.isfinite(loss_mean) or not chains_healthy:
            self._diverged(loss_mean, fields)
        diagnostics = {**diagnostics, **periodic_rhat(self)}  # chain checks every diagnostics.rhat_every_epochs
        diagnostics.update(self._progress_check())  # the held-out log-likelihood when due (training/stopping.py)
        record = {
            "phase": position.phase.value,
            "epoch": position.epoch + 1,
            "step": position.global_step,
            "loss": loss_mean,
            **fields,
            "seconds": position.epoch_seconds,
            "elapsed": position.vae_seconds + position.almond_seconds,
            **diagnostics,
        }
        if self.dist.is_writer:
            with self.folder.writing(self.folder.metrics), open(self.folder.metrics, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        self.logger.log_epoch(record)
        self.reporter.end_epoch(position.epoch, loss_mean)
        position.epoch += 1
        position.batch = 0
        position.loss_sum = 0.0
        position.diagnostics_sum = {}
        position.epoch_seconds = 0.0
        self.order = None
        every = self.cfg.checkpoint.every_epochs
        if every and position.epoch % every == 0 and not self._phase_over(position.phase):
            self.save()

    def _diverged(self, loss_mean: float, fields: dict) -> None:
        position = self.position
        where = f"{position.phase} epoch {position.epoch + 1}"
        if position.phase == Phase.ALMOND:
            advice = (
                f"the Langevin step size in force was {fields.get('step_size'):.3g} "
                f"(sampler.step_size={self.sampler.step_size}); lower sampler.step_size "
                f"(for example to {self.sampler.step_size / 10:.3g}) or schedule.adam_lr / schedule.sgd_lr"
            )
            if self.sampler.method == "ula":
                advice += ", or set sampler.method=mala, whose Metropolis correction rejects the unstable moves"
        else:
            advice = f"lower schedule.vae_lr (now {self.cfg.schedule.vae_lr})"
        if self.folder.last.is_file():
            state = f"The last good checkpoint in {self.folder.checkpoints} is intact and resumable"
        else:
            state = (
                f"It diverged before its first checkpoint, so {self.run_dir} holds no checkpoint and cannot be "
                "resumed: start a new run with the changed setting"
            )
        if math.isfinite(loss_mean):
            what = (
                f"the Langevin chains left the prior's range (a coordinate beyond |z| = {ESCAPE_BOUND:g}, or "
                f"non-finite) while the loss ({loss_mean:.6g}) was still finite"
            )
        else:
            what = f"the loss became non-finite ({loss_mean})"
        raise DivergenceError(f"training diverged in {where}: {what}; {advice}. {state}.")

    def _start_almond(self) -> None:
        """At the VAE/ALMOND boundary: score the VAE, keep its checkpoint, start chains from the encoder."""
        self._end_phase(Phase.VAE)
        self.vae_metrics = self.task.score(self.model, self.dataset, self.cfg, self.device)
        self.vae_snapshot = self.task.snapshot(self.model, self.dataset, self.cfg, self.device)
        self.position.vae_epochs_done = self.position.epoch
        self.position.phase, self.position.epoch, self.position.batch = Phase.ALMOND, 0, 0
        self.save(vae=True)

    def _handle_signal(self, signal_number, _frame) -> None:
        self.stop_signal = signal_number

    def run(self) -> dict:
        """Advances the run to its end and returns the summary."""
        if self.dist.is_writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.reporter = ProgressReporter(
            self.cfg.progress if self.dist.is_writer else "quiet", updates_per_epoch=self.num_batches
        )
        self.logger = build_logger(self.cfg, self.run_dir, self.position.global_step, enabled=self.dist.is_writer)
        previous = {sig: signal.signal(sig, self._handle_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:  # the handler stays through the phase ends and the final scoring: a signal there saves too
            try:
                self._stop_if_signalled_at_start()
                self._loop()
            finally:
                self.reporter.close()
                self.logger.flush()
            return self._finish()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_if_signalled_at_start(self) -> None:
        """A signal that arrived while the run was starting (``defer_stop_signals``) stops it now: at the
        checkpoint it resumed or warm-started from, or, with none yet, before anything was trained."""
        signal_number = self.dist.agree_on_signal(pending_stop_signal())  # every rank stops, or none
        if signal_number is None:
            return
        if self.folder.last.is_file():
            raise Interrupted(signal_number, self.folder.last)
        raise StoppedBeforeTraining(signal_number)

    def _stop_if_signalled(self) -> None:
        """Between the final stages (checkpoint, baselines, scoring): a signal received there stops the run at
        its final checkpoint, which a resume continues from (it scores the run again)."""
        self.stop_signal = self.dist.agree_on_signal(self.stop_signal)
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal, self.folder.last)

    def _loop(self) -> None:
        position = self.position
        current_phase = None
        while position.phase != Phase.DONE:
            if self._phase_over(position.phase):
                if position.phase == Phase.VAE:
                    self._start_almond()
                else:
                    self._end_phase(Phase.ALMOND)
                    self.almond_optimisers.use_average()  # schedule.average_last: the averaged parameters
                    finished = self.task.finish_fit(self.model, self.dataset, self.cfg, self.device)
                    if finished:
                        self.reporter.note(finished)
                    position.phase = Phase.DONE
                continue
            if current_phase != position.phase:
                current_phase = position.phase
                self.reporter.start_phase(current_phase, self._epochs_in(current_phase), position.epoch)
            if position.phase == Phase.ALMOND and self.chains is None:
                if position.epoch == 0 and position.batch == 0:  # a collapsed warm start is repaired, not passed on
                    found = repair_collapsed_warm_start(self.model, self.task, self.dataset, self.cfg, self.device)
                    position.vae_collapse = found if found is not None else position.vae_collapse
                self.chains = phases.initial_chains(
                    self.model, self.x, self.sampler.num_chains, self.noise_generator, self.batch_size, self.unit_index
                )
            started = time.perf_counter()
            loss, diagnostics, fields = self._update()
            loss_value = float(loss)
            seconds = time.perf_counter() - started
            position.epoch_seconds += seconds
            if position.phase == Phase.VAE:
                position.vae_seconds += seconds
            else:
                position.almond_seconds += seconds
            position.loss_sum += loss_value
            for name, value in diagnostics.items():
                position.diagnostics_sum[name] = position.diagnostics_sum.get(name, 0.0) + float(value)
            position.batch += 1
            position.global_step += 1
            if position.batch == self.num_batches:
                count = self.num_batches
                self._end_epoch(
                    position.loss_sum / count, {k: v / count for k, v in position.diagnostics_sum.items()}, fields
                )
            save_due = self._save_due_on_time()
            self.stop_signal = self.dist.agree_on_signal(self.stop_signal)  # all ranks stop at the same update
            if save_due or self.stop_signal is not None:
                self._stop_if_diverged_mid_epoch(fields)
                path = self.save()
                if self.stop_signal is not None:
                    raise Interrupted(self.stop_signal, path)

    def _end_phase(self, phase: Phase) -> None:
        """Records how many epochs ``phase`` ran and why it stopped (summary.json ``timing``, train.log); at the end of
        ALMOND, whether it was still improving (its checks over the last ``schedule.auto.window`` checks)."""
        position = self.position
        reason = self._stopped_because(phase)
        position.stopped_because[phase.value] = reason
        checks = self.checks[phase]
        words = {
            FIXED: f"its schedule.{phase.value}_epochs",
            NO_GAIN: f"no gain in the {self.check_rows_name} rows' log-likelihood above its standard error over the "
            f"last {checks.window} checks (the best at epoch {checks.incumbent_epoch})",
            CAP: f"schedule.auto.max_{phase.value}_epochs (its cap under auto)",
        }[reason]
        self.reporter.note(f"{phase.value} phase: {position.epoch} epochs run; stopped by {words}")
        if phase == Phase.ALMOND and checks.checks:  # a run stopped for want of a gain is not still improving
            position.still_improving = reason != NO_GAIN and checks.still_improving()

    def _save_due_on_time(self) -> bool:
        minutes = self.cfg.checkpoint.every_minutes
        return self.dist.any(bool(minutes) and time.monotonic() - self.last_save_time >= 60.0 * minutes)

    def _stop_if_diverged_mid_epoch(self, fields: dict) -> None:
        """Before a save between epoch ends (on time or on a signal): a diverged state must not become the last
        checkpoint, so the run stops as ``_end_epoch`` would and the previous checkpoint stays the last one."""
        position = self.position
        loss_so_far = position.loss_sum / position.batch if position.batch else 0.0
        healthy = math.isfinite(loss_so_far) and (self.chains is None or self.chains.healthy())
        if self.dist.any(not healthy):
            self._diverged(loss_so_far, fields)

    def _finish(self) -> dict:
        """Scores the final model, writes summary.json, the figures and the final checkpoint."""
        self.save()
        if self.position.still_improving and self.dist.is_writer:
            log.warning(
                still_improving_message(
                    self.run_dir, self.checks[Phase.ALMOND], self.position.epoch, self.check_rows_name
                )
            )
        self._stop_if_signalled()
        shared = self.task if self.task.shares_with_baselines else None
        fitted = fit_baselines(
            self.task, self.dataset, self.cfg, self.run_dir, lambda cfg, folder: TrainingRun(cfg, folder, shared)
        )
        self._stop_if_signalled()
        summary = summarise(
            self.task,
            self.dataset,
            self.cfg,
            self.device,
            almond=self.model,
            vae=self.vae_metrics,
            fitted_baselines=fitted,
            position=self.position,
            precision=precision_record(self.model, self.cfg, self.device),
        )
        self._stop_if_signalled()
        if self.dist.is_writer:
            with self.folder.writing(self.folder.summary):
                write_text_atomic(self.folder.summary, json.dumps(summary, indent=2) + "\n")
            self.task.figures(self.run_dir, self.model, self.dataset, self.cfg, self.device, summary, self.vae_snapshot)
        self.logger.log_summary(summary, self.run_dir, self.position.global_step)
        self.logger.close()
        self.dist.finish()
        return summary


def train(cfg, run_dir: str | Path, checkpoint: dict | None = None, warm: tuple[Path, dict] | None = None) -> dict:
    """Trains the model ``cfg`` describes into ``run_dir`` and returns the summary dict.

    Args:
        cfg: the composed config.
        run_dir: the run folder (created if needed).
        checkpoint: a loaded checkpoint of this run to continue from, or None for a new run.
        warm: (path, loaded checkpoint) of another run's VAE to start the ALMOND phase from (``warm_start=``),
            for a new run.
    """
    run = TrainingRun(cfg, Path(run_dir))
    # Rank 0 alone writes the folder, so it alone holds the lock (the almond command may hold it already).
    locked = not run.dist.is_writer or held_here(Path(run_dir))
    if run.dist.is_writer and locked:
        record_holder(Path(run_dir))
    with contextlib.nullcontext() if locked else RunFolderLock(Path(run_dir)):
        if checkpoint is not None:
            run.resume_from(checkpoint)
        elif warm is not None:
            run.start_from_warm_start(*warm)
        summary = run.run()
    if run.dist.is_writer:
        report_end(cfg.progress, summary, Path(run_dir))
    return summary


def start(
    cfg, task_overrides: list[str], run_dir: str | Path, config_subdir: str | None, parallel_jobs: int = 1
) -> dict:
    """``almond train`` from the config Hydra composed: a new run, the continuation of a run (``resume=``,
    ``resume.py``) or a run started from another run's VAE (``warm_start=``, ``warm_start.py``), checked
    (``config.validate``) and trained into ``run_dir``; returns the summary.

    Args:
        cfg: the composed config.
        task_overrides: the command line's overrides (Hydra's ``overrides.task``).
        run_dir: the run folder.
        config_subdir: where in ``run_dir`` Hydra saved the composed config (its ``output_subdir``; None on
            torchrun's other ranks); a warm-started run's own config replaces it there.
        parallel_jobs: jobs of this sweep running at once on this machine (joblib's ``n_jobs``), which share its
            cores with this one, as torchrun's ranks on this node do.
    """
    cfg, checkpoint = effective_config(cfg, task_overrides, run_dir)
    warm = None
    if checkpoint is None and cfg.get("warm_start"):
        cfg, warm_path, warm_payload = warm_start_config(cfg, task_overrides)
        warm = (warm_path, warm_payload)
        if config_subdir:  # this run's config is the warm start's with the ALMOND overrides
            write_text_atomic(RunFolder(run_dir).config_in(config_subdir), OmegaConf.to_yaml(cfg))
    validate(cfg)
    resumed_threads = None if checkpoint is None else checkpoint.get("threads")
    choice = configure_process(cfg.threads, processes=parallel_jobs * local_processes(), resumed=resumed_threads)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per rank
        describe_threads(choice)
    return train(cfg, run_dir, checkpoint=checkpoint, warm=warm)
