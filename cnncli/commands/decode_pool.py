"""predict's decode pool: worker processes for a long run, threads for a short one or where processes cannot start.

Decoding small images is mostly Python work that holds the GIL, so a long run decodes in worker processes; a short
one keeps threads, which start at once. Where multiprocessing cannot make its locks (a read-only or missing
/dev/shm, some containers and sandboxes), the pool cannot be created at all: the run then decodes in threads,
with the same results, only slower. No typer or rich here; multiprocessing is imported only for a process pool.
"""

import os
import signal
import threading
import time


def _worker_init(parent):
    # Ctrl-C reaches the whole process group: the parent reports it, workers just stop quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    from cnncli.data.images import bombs_are_errors

    bombs_are_errors().__enter__()  # for the worker's whole life: it only ever decodes


def _exit_with_parent(parent, every=0.2):
    """End this worker soon after its parent is gone, however the parent died (even SIGKILL, which runs no
    cleanup): a worker left behind would hold the caller's stdout open, and `| wc -l` would never end."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _process_pool(workers):
    # The pool's queues need multiprocessing's resource tracker, a helper process that removes their semaphores
    # should predict be killed outright (SIGKILL) and then says so in a 'leaked semaphore objects' warning on
    # the stderr it inherited: noise in a cron log, as nothing was lost. Started first with stderr on /dev/null.
    import multiprocessing  # here, not at import: a short run (one image) never starts a process pool
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import resource_tracker

    from cnncli.commands.streams import spawn_without_stderr

    spawn_without_stderr(resource_tracker.ensure_running)
    # spawn, not fork: the parent already runs threads (kernels, the input reader), which fork would copy mid-state.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(os.getpid(),))


def decode_pool(workers, processes):
    """An executor for predict's decodes: `workers` worker processes when processes is True and they can be
    created, else `workers` threads (at least one). A process pool that cannot be made (multiprocessing's
    semaphores: EROFS from a read-only /dev/shm, ENOSYS, EACCES) means threads, never a failed run."""
    from concurrent.futures import ThreadPoolExecutor

    if processes:
        try:
            return _process_pool(workers)
        except (OSError, ImportError, NotImplementedError):  # no semaphores: sem_open missing or refused
            pass  # the same decodes, in this process: slower for many small images, same rows
    return ThreadPoolExecutor(max(1, workers))


def stop_pool(pool, finished):
    """Shut the decode pool down. After an error or a signal (finished False), queued work is dropped and
    worker processes are ended at once rather than waited for."""
    if finished:
        pool.shutdown(wait=True)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # ProcessPoolExecutor only
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
