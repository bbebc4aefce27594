"""Verification in worker processes that are killed at their deadline (pebble's ``ProcessPool``).

Why processes: a verifier reads untrusted model output, and a policy under RL pressure finds what the verifier
does badly. math-verify on ``\\boxed{9^{9^{9^{9^{9}}}}}`` reaches a big-integer power in sympy that holds the GIL:
on the main thread its alarm-based limit fires late (~2.5 s under a 2 s limit), and from any other thread the
waiting thread never runs again, so the whole process hangs. Only a separate process, killed at the deadline,
bounds that. pebble kills a worker whose call runs past ``timeout_s`` (counted from when the worker starts it)
and starts a replacement, so a batch of n calls costs at most about ceil(n / workers) x timeout_s, whatever
the answers are and whichever thread waits. (``concurrent.futures.ProcessPoolExecutor`` cannot do this: it has
no way to stop one running call, and a worker killed from outside breaks the whole pool, failing every call
in flight, so each timeout would cost a new pool and a re-run of the batch's other calls.)

Workers are forked from the calling process (``fork``, where the platform has it), the way torch's DataLoader
starts its workers: a replacement then costs milliseconds, the verifier's imports are inherited, and the
caller's main module is not imported again (``spawn`` and ``forkserver`` re-import it in every worker, which
for ``quadrl-train`` means torch, and fail in scripts without an ``if __name__ == "__main__"`` guard). The
children run only the verifier, never torch or MLflow, so the threads those run in the parent do not matter.

A task opts in by scoring through a :class:`VerifierPool` in its ``rewards`` method (see ``math_file``). The
function it runs must be a module-level function of picklable arguments that returns a picklable result.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from pebble import ProcessExpired, ProcessPool

logger = logging.getLogger(__name__)

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Worker processes when a task does not say: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


@dataclass
class PoolResults:
    """The results of one :meth:`VerifierPool.map`, in the order of its calls."""

    values: list[Any]
    """The function's result per call; ``default`` where it timed out or raised."""
    timeouts: int = 0
    """Calls stopped at their deadline (their worker was killed and replaced)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Calls that raised, by exception type (``ProcessExpired``: the worker died, e.g. out of memory)."""


def _die_on_sigterm() -> None:
    """Worker initializer: SIGTERM ends the worker at once. pebble stops a call past its deadline with SIGTERM,
    handled in the worker by a Python-level handler, which runs only between bytecodes: a worker inside one long
    C-level big-integer operation (``\\boxed{10^{10^{10}}!}`` against ``2\\sqrt{2}``) ignored it until pebble's
    SIGKILL 3 s later (5.5 s under a 2 s limit). With the default action the kernel ends the worker during the
    operation (2.2-2.3 s, as for any other answer); a worker holds nothing that needs a clean exit."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _shutdown(pool: ProcessPool) -> None:
    pool.stop()
    pool.join(timeout=10)


class VerifierPool:
    """Calls ``fn(*args)`` in ``workers`` processes, each call killed after ``timeout_s`` seconds.

    ``preload``: modules the calls need, imported in this process before the first worker starts, so that no
    worker (a replacement included) spends its deadline importing them.

    The processes start at the first :meth:`map` and stop with the pool (:meth:`close`, garbage collection or
    interpreter exit). Safe to use from any thread, and from several at once.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        timeout_s: float,
        workers: int | None = None,
        default: Any = None,
        name: str = "verifier",
        preload: Sequence[str] = (),
    ):
        if timeout_s <= 0:
            raise ValueError(f"{name}: the verification timeout must be > 0 s, got {timeout_s}")
        if workers is not None and workers < 1:
            raise ValueError(
                f"{name}: verify_workers must be >= 1 or null (all cores, at most 8), got {workers}"
            )
        self.fn, self.timeout_s, self.default, self.name = fn, float(timeout_s), default, name
        self.preload = tuple(preload)
        self.workers = workers or default_workers()
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    def _started(self) -> ProcessPool:
        with self._lock:
            if self._pool is None:
                for module in self.preload:  # imported once here, inherited by every (re)started worker
                    importlib.import_module(module)
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("fork" if "fork" in methods else None)
                self._pool = ProcessPool(
                    max_workers=self.workers, context=context, initializer=_die_on_sigterm
                )
                self._finalizer = weakref.finalize(self, _shutdown, self._pool)
            return self._pool

    def map(self, calls: Sequence[tuple[Hashable, ...]]) -> PoolResults:
        """``fn(*args)`` for every ``args`` in ``calls``, results in the same order. Identical calls run once."""
        if not calls:
            return PoolResults([])
        pool = self._started()
        futures = {
            args: pool.schedule(self.fn, args, timeout=self.timeout_s) for args in dict.fromkeys(calls)
        }
        outcome: dict[Hashable, Any] = {}
        failed: dict[Hashable, str] = {}
        for args, future in futures.items():
            try:
                outcome[args] = future.result()
            except FutureTimeout:
                failed[args] = "timeout"
            except ProcessExpired as exc:  # the worker died (a signal, out of memory); pebble replaces it
                failed[args] = f"ProcessExpired (exit code {exc.exitcode})"
            except Exception as exc:  # noqa: BLE001 - any exception of the verifier scores that call `default`
                failed[args] = type(exc).__name__
        values = [outcome.get(args, self.default) for args in calls]
        kinds = Counter(failed[args] for args in calls if args in failed)
        timeouts = kinds.pop("timeout", 0)
        errors = {kind.split(" ")[0]: n for kind, n in kinds.items()}
        if timeouts:
            logger.warning(
                "%s: %d of %d verifications stopped at the %.0f s deadline and scored %r",
                self.name,
                timeouts,
                len(calls),
                self.timeout_s,
                self.default,
            )
        if kinds:
            detail = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
            logger.warning(
                "%s: %d of %d verifications raised (%s) and scored %r",
                self.name,
                sum(kinds.values()),
                len(calls),
                detail,
                self.default,
            )
        return PoolResults(values, timeouts, errors)

    def close(self) -> None:
        """Stop the worker processes now (a later :meth:`map` starts new ones)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._pool, self._finalizer = None, None

    def __getstate__(self) -> dict[str, Any]:  # a copied task gets its own pool, started on first use
        state = dict(self.__dict__)
        state.update(_pool=None, _lock=None, _finalizer=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
