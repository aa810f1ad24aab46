"""The proposal helper of an overlapped search (:class:`swift_scale.search.driver.Proposer`): a process of its
own, started as ``python -m swift_scale.search.helper FD`` with one end of a socket pair as file descriptor FD.

It is a fresh interpreter rather than a ``multiprocessing`` spawn, because a spawn re-imports the user's
``__main__``: a script that calls ``Pipeline(cfg).run()`` at top level, without an
``if __name__ == "__main__":`` guard, would run again in the helper, and the search would die on a broken pipe.
The helper imports nothing but this package.

Protocol (pickled messages over a :class:`multiprocessing.connection.Connection`): first
``(engine settings, cores to spread over or None)``, then one ``(history, observed, pending, q)`` per round,
answered by its list of :class:`~swift_scale.search.engine.Trial`; ``None`` or the end of the pipe ends it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from multiprocessing.connection import Connection


def _spread(tid: int, cores: list[int], busy: threading.Event, period: float = 0.02) -> None:
    """Move the helper's computing thread ``tid`` round-robin over ``cores`` every ``period`` seconds while
    ``busy`` is set (idle, it blocks on its pipe wherever it was). With every core running a trainer, the scheduler
    keeps the helper on the core of the process that woke it, so one trainer pays the whole proposal each round
    and the others wait for it at the gather; spread, each pays 1/len(cores) of it."""
    i = 0
    while True:
        busy.wait()
        try:
            os.sched_setaffinity(tid, {cores[i % len(cores)]})
        except OSError:  # the thread is gone, or the cores changed under us: stay where the scheduler puts it
            return
        i += 1
        time.sleep(period)


def serve(conn: Connection) -> None:
    """Answer the search process's rounds on ``conn`` until it sends None or goes away."""
    import torch

    from swift_scale.search.engine import SearchEngine

    try:
        settings, spread = conn.recv()
    except EOFError:
        return
    torch.set_num_threads(1)
    busy = threading.Event()
    if spread:
        threading.Thread(target=_spread, args=(threading.get_native_id(), spread, busy), daemon=True).start()
    with warnings.catch_warnings():  # import BoTorch now (seconds of CPU), while the first rounds train
        warnings.simplefilter("ignore")
        import botorch.acquisition  # noqa: F401
        import botorch.fit  # noqa: F401
        import botorch.optim  # noqa: F401
    engine = SearchEngine(None, **settings)
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the search process is gone
            return
        if msg is None:
            return
        engine.history, observed, pending, q = msg
        busy.set()
        out = engine.ask_batch(q, observed=observed, pending=pending)
        busy.clear()
        conn.send(out)


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
