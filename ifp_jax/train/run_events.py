"""Fault counts over a whole run, across restarts: restarts, checkpoints skipped at restore,
steps whose update was skipped (non-finite), prompts and examples truncated.

They travel in each checkpoint's JSON item beside the data position, so after a restart they
are exactly those of the restored step (windows after it are redone, not counted twice). The
loop writes them to metrics.jsonl at every logging window (`events/<name>`, cumulative) and
prints them at the end of the run.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RunEvents:
    restarts: int = 0
    skipped_checkpoints: int = 0
    nonfinite_steps: int = 0
    predictor_truncated: int = 0
    decoder_truncated: int = 0

    @classmethod
    def from_state(cls, state: dict | None) -> "RunEvents":
        """From a checkpoint's JSON item (an older checkpoint without counts: zeros)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in (state or {}).items() if k in known})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def add_window(self, metrics: dict) -> None:
        """Adds one logging window's counts (its computed metrics)."""
        self.nonfinite_steps += int(metrics.get("nonfinite_steps", 0))
        self.predictor_truncated += int(metrics.get("data/predictor_truncated", 0))
        self.decoder_truncated += int(metrics.get("data/decoder_truncated", 0))

    def metrics(self) -> dict:
        return {f"events/{k}": float(v) for k, v in self.as_dict().items()}

    def summary(self, step: int) -> str:
        return (f"run summary at step {step}: {self.restarts} restart(s), "
                f"{self.skipped_checkpoints} damaged checkpoint(s) skipped, "
                f"{self.nonfinite_steps} non-finite step(s) not applied, "
                f"{self.predictor_truncated} prompt(s) and {self.decoder_truncated} example(s) "
                f"truncated")
