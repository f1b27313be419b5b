"""The `digest serve` process: the scheduler and the web server in one process, stopped by a
signal. What each of them does is in `service.scheduler` and `service.web`."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from digest.service.scheduler import Scheduler

log = logging.getLogger("digest")


def serve(scheduler: Scheduler | None, web: Callable[[threading.Event], None] | None = None) -> int:
    """Run until SIGTERM or SIGINT: `scheduler` (None: no scheduled sends) and then `web(stop)`
    (the web server, which blocks until it gets a signal or `stop` is set), or just wait. Returns
    the exit status, 0 after a signal.

    The first signal sets the stop flag (the scheduler's own, when there is one): the job in
    progress finishes the message in flight and leaves the rest pending for the next start. A
    second one exits at once. While `web()` runs, the web server's own handlers (uvicorn's) take
    the signals; when it returns we stop too.
    """
    stop = scheduler.stop if scheduler is not None else threading.Event()

    def on_signal(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: exiting now; deliveries in flight may be sent again on the next start", name)
            os._exit(1)
        log.info("%s: stopping after the message in flight; the rest stays pending", name)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        if scheduler is not None:
            scheduler.start()
        if web is not None:
            web(stop)
        else:
            while not stop.wait(1.0):
                pass
    finally:
        stop.set()
        if scheduler is not None:
            scheduler.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
