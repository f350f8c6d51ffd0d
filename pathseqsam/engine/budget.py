"""A wall-time budget for training: stop when the time is up, after validating what was learnt."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ignite.engine import Engine, Events

from pathseqsam.engine.distributed import any_rank

__all__ = ["WallTimeBudget"]

logger = logging.getLogger("pathseqsam")


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0.0)))


class WallTimeBudget:
    """Terminate training once ``max_minutes`` of wall time have passed since the run started.

    When the time is up in the middle of an epoch, that epoch is cut short with Ignite's
    ``terminate_epoch()``, which still fires ``EPOCH_COMPLETED``: validation, the best-model
    checkpoint and the latest checkpoint run on the model as it is; then training terminates. So a
    budgeted run always ends with a validated, saved model, and overshoots the budget by at most one
    iteration plus one validation. ``max_epochs`` stays an upper bound. The budget counts from
    this run's start (a resumed run gets the full budget again). Note that an epoch-based learning
    rate schedule (the bundle's cosine) is then cut short where the time ends.

    Args:
        max_minutes: the budget in minutes; None disables the handler (attach does nothing).
        clock: seconds-valued monotonic clock (for tests).
    """

    def __init__(self, max_minutes: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if max_minutes is not None and not max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 or None, got {max_minutes}")
        self.max_minutes = max_minutes
        self.clock = clock
        self.start: float | None = None
        self.expired = False  # the budget is used up
        self.stopped_early = False  # the budget ended the run before max_epochs * epoch_length iterations

    @property
    def budget_s(self) -> float:
        return float("inf") if self.max_minutes is None else 60.0 * self.max_minutes

    def elapsed(self) -> float:
        """Seconds since the run started (0 before it starts)."""
        return 0.0 if self.start is None else self.clock() - self.start

    def attach(self, engine: Engine) -> None:
        if self.max_minutes is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _started(self, _engine: Engine) -> None:
        self.start, self.expired, self.stopped_early = self.clock(), False, False

    def _time_up(self) -> bool:
        """Whether the budget is used up; in a distributed run, on any rank (all ranks stop together)."""
        return any_rank(self.elapsed() >= self.budget_s)

    def _iteration(self, engine: Engine) -> None:
        if not self.expired and self._time_up():
            self.expired = True
            s = engine.state
            logger.info(
                "time budget of %.1f min used up at epoch %d iteration %d: ending this epoch "
                "(validation and checkpoints still run), then stopping",
                self.max_minutes,
                s.epoch,
                (s.iteration - 1) % (s.epoch_length or 1) + 1,
            )
            engine.terminate_epoch()

    def _epoch(self, engine: Engine) -> None:
        used = self.elapsed()
        if self._time_up() or self.expired:
            s = engine.state
            self.expired = True
            self.stopped_early = s.iteration < (s.max_epochs or 0) * (s.epoch_length or 0)
            logger.info(
                "stopping after epoch %d/%d: time budget %s used (%s)",
                engine.state.epoch,
                engine.state.max_epochs,
                _clock(self.budget_s),
                _clock(used),
            )
            engine.terminate()
        else:
            logger.info("time budget: %s of %s used", _clock(used), _clock(self.budget_s))
