"""Where a run is: its phase (VAE warm start, ALMOND, done), epoch, batch and the running sums of the epoch in
progress. A checkpoint stores it as plain values (``to_state``), so it loads with ``weights_only=True``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum


class Phase(str, Enum):
    """The phases of a run, in order. Their values are what ``metrics.jsonl`` and checkpoints hold."""

    VAE = "vae"
    ALMOND = "almond"
    DONE = "done"

    def __str__(self) -> str:  # "vae", not "Phase.VAE", in messages and f-strings on every Python version
        return self.value


@dataclass
class Position:
    """Where the run is. ``epoch`` is 0-based within the phase; ``batch`` counts updates done in it."""

    phase: Phase = Phase.VAE
    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    diagnostics_sum: dict = field(default_factory=dict)
    epoch_seconds: float = 0.0
    vae_seconds: float = 0.0
    vae_epochs_done: int = 0
    almond_seconds: float = 0.0
    # How the phases ended (training/stopping.py): {"vae" | "almond": "epochs" | "no_gain" | "cap"}, whether ALMOND
    # was still improving at its end (None: not judged), and a collapsed VAE warm start found and repaired
    # (training/collapse.py; None: none found).
    stopped_because: dict = field(default_factory=dict)
    still_improving: bool | None = None
    vae_collapse: dict | None = None

    def to_state(self) -> dict:
        """Plain values for a checkpoint."""
        return {**asdict(self), "phase": self.phase.value}

    @classmethod
    def from_state(cls, state: dict) -> Position:
        # A copy of the running sums: the run adds to them, and the checkpoint it came from may be used again.
        sums = dict(state.get("diagnostics_sum", {}))
        stopped = dict(state.get("stopped_because", {}))
        return cls(**{**state, "phase": Phase(state["phase"]), "diagnostics_sum": sums, "stopped_because": stopped})
