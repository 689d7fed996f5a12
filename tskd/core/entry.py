"""Run bookkeeping shared by the entry points: a run that stops early says why, and exits non-zero.

``train.py`` and ``eval.py`` end with ``sys.exit(guarded(main))``. :func:`guarded` turns SIGTERM
and SIGINT (Ctrl-C) into an :class:`Interrupted` exception raised in the main thread, so the run
stops wherever it is, Lightning finalises its loggers and callbacks, :func:`record_failure`
writes ``status.json`` ("interrupted", with the signal), a sweep writes its summary (the jobs it
never started listed as "not run"), and the process exits with ``128 + signal`` (143 for
SIGTERM, 130 for SIGINT), the shell's convention for "killed by a signal".

Ctrl-C in a terminal and a scheduler's SIGTERM go to the whole process group: DataLoader
workers (forked children) get them too. A child leaves the stopping to the main process
(:func:`_in_forked_child`), and whatever error the workers' end causes while the run unwinds,
the run is recorded and exits as stopped by the signal (:func:`interruption`).

Why not Lightning's own handling: during ``fit``/``test`` Lightning replaces the SIGTERM handler
with one that sets ``trainer.received_sigterm``; its loops then raise ``SIGTERMException``, a
``SystemExit`` with no code, i.e. exit status 0, and a Hydra sweep treats it as the end of the
whole sweep. Lightning keeps an existing handler and calls it after its own, so ours still runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tskd.core.resolvers  # noqa: F401  (registers ${tskd.*} before Hydra composes the config)
from tskd.core.files import write_json_atomic

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """The process received SIGTERM or SIGINT.

    A ``BaseException`` (as ``KeyboardInterrupt`` is) so no ``except Exception`` on the way out,
    Hydra's job runner included, mistakes it for a failed job and carries on.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        """``128 + signal number``: what a shell reports for a process killed by that signal."""
        return 128 + self.signum


_received: list[int] = []
_owner: list[int] = []  # the pid that installed the handlers (forked children inherit them)


def _in_forked_child(signum: int) -> bool:
    """Handle ``signum`` in a forked child (a DataLoader or cache worker); True if it was.

    A terminal's Ctrl-C and a scheduler's SIGTERM reach the whole process group, workers
    included. The main process stops the run and shuts its workers down; a worker that raised
    :class:`Interrupted` itself would die first and its death would replace the interruption.
    So a child ignores SIGINT and takes SIGTERM's default action (its parent's
    ``terminate()`` must still end it).
    """
    if not _owner or os.getpid() == _owner[0]:
        return False
    if signum == signal.SIGTERM:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return True


_forking = False  # os.fork is running its at-fork hooks in this process


def _fork_starts() -> None:
    global _forking
    _forking = True


def _fork_ends() -> None:
    global _forking
    _forking = False  # no call after this line: a pending signal must not run in this hook


def _on_signal(signum: int, frame: Any) -> None:
    if _in_forked_child(signum):
        return
    _received.append(signum)
    if len(_received) > 1:
        # A second signal while the first is being handled: the user wants out now. Fall back
        # to the default action (terminate) rather than interrupt the clean-up half-way.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    # torch's SIGCHLD handler raises RuntimeError in the main thread, wherever it is, once a
    # loader worker has died; after a group SIGTERM killed the workers it would land in the
    # middle of the clean-up (status.json). The run is stopping: a worker's end is no news.
    # (SIG_DFL, not SIG_IGN: the latter reaps children that multiprocessing still waits for.)
    if signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if _forking:
        # A DataLoader starting its workers: an exception raised in an at-fork hook (logging
        # releases its lock in one) is printed and dropped, and the run would go on. It stays
        # pending instead; raise_pending_interruption() raises it at the next batch.
        return
    raise Interrupted(signum)


def raise_pending_interruption() -> None:
    """Raise :class:`Interrupted` if a signal came and the run still goes on.

    The handler's exception can be lost: deferred while forking (see :func:`_on_signal`), or
    raised in a place that ignores exceptions (a ``__del__``). The Trainer calls this at every
    batch (:class:`tskd.runner.trainer.PendingInterruption`), so such a run stops one batch later.
    """
    if _received:
        raise Interrupted(_received[0])


_fork_hooks: list[bool] = []


def install_signal_handlers() -> None:
    """Makes SIGTERM and SIGINT raise :class:`Interrupted` in the main thread."""
    _received.clear()
    _owner[:] = [os.getpid()]
    if not _fork_hooks:  # once per process: hooks cannot be removed. Registered after
        # logging's, so "before" runs first and "after" last around logging's own hooks.
        os.register_at_fork(before=_fork_starts, after_in_parent=_fork_ends,
                            after_in_child=_fork_ends)
        _fork_hooks.append(True)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, _on_signal)


def interruption(exc: BaseException) -> tuple[str, int] | None:
    """``(signal name, exit code)`` when ``exc`` means the run was stopped by a signal.

    Besides :class:`Interrupted` this recognises what happens without our handlers (a library
    caller of :func:`tskd.runner.run.train`): ``KeyboardInterrupt`` and Lightning's
    ``SIGTERMException``.
    Lightning turns Ctrl-C into ``sys.exit(1)``; that is only recognisable with our handlers.
    """
    if isinstance(exc, Interrupted):
        return exc.signal_name, exc.exit_code
    if _received:  # our handler saw a signal: whatever ended the run followed from it
        stopped = Interrupted(_received[0])
        return stopped.signal_name, stopped.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT", 128 + signal.SIGINT
    lightning = sys.modules.get("pytorch_lightning.utilities.exceptions")
    if lightning is not None and isinstance(exc, lightning.SIGTERMException):
        return "SIGTERM", 128 + signal.SIGTERM
    return None


def guarded(main: Callable[[], Any]) -> int:
    """Runs a Hydra ``main`` with the signal handlers installed; returns the exit status.

    0 when ``main`` returns, ``128 + signal`` when a signal stopped it. Errors propagate (Hydra
    has already printed them and exits 1 itself).
    """
    install_signal_handlers()
    try:
        main()
    except BaseException as e:
        stopped = interruption(e)
        if stopped is None:
            raise
        name, code = stopped
        sys.stderr.write(f"{Path(sys.argv[0]).name}: interrupted by {name}; exit status {code} "
                         "(status.json in the run dir says \"interrupted\").\n")
        return code
    return 0


@contextlib.contextmanager
def record_failure(run_dir: str | Path) -> Iterator[None]:
    """Write ``status.json``: how the body ended; an exception is re-raised.

    ``{"status": "interrupted", "signal": "SIGTERM", ...}`` when a signal stopped the run (see
    :func:`interruption`), ``{"status": "failed", "error": ...}`` for anything else, and
    ``{"status": "completed"}`` when the body returns. A sweep summary reads it to report the
    run as such instead of dropping it, and to tell a run that finished without a test
    (``test_after_training=false``: no metrics.json) from one that never finished.
    """
    try:
        yield
    except BaseException as e:
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        stopped = interruption(e)
        if stopped is not None:
            status = {"status": "interrupted", "signal": stopped[0],
                      "error": f"interrupted by {stopped[0]}"}
        else:
            status = {"status": "failed",
                      "error": f"{type(e).__name__}: {e}".splitlines()[0][:2000]}
        status["traceback"] = traceback.format_exc()[-20000:]
        write_json_atomic(out / "status.json", status)  # two DDP ranks may both record
        if _received and not isinstance(e, Interrupted):
            # The signal's consequence (a loader worker killed by the same group signal) came
            # out first: leave as the signal, so a sweep stops too (Hydra goes on after an
            # Exception).
            raise Interrupted(_received[0]) from e
        raise
    write_json_atomic(Path(run_dir) / "status.json", {"status": "completed"})
