"""The metrics-sink protocol: where the training loop sends what it measures.

The loop never names a logging backend (torchtune's ``MetricLoggerInterface``): the app injects any object with
these methods. ``experiments.tracking.Tracker`` (MLflow) satisfies it; :class:`NullSink` drops everything.
"""

from __future__ import annotations

from typing import Any, Protocol


class MetricsSink(Protocol):
    run_id: str | None
    """The backend's id of the run being logged (saved in checkpoints so that a resumed run continues it)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars at one training step."""

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows with the same keys (e.g. sample completions), stored as one artifact."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """String facts about the run."""


class NullSink:
    """A sink that records nothing (tests, tracking off)."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass
