"""Worker processes for a stage's images: `ordered_map` runs a function over items in spawned processes and
yields the results in the items' order, with a bounded number in flight.

Workers are spawned, not forked: a child forked from a process whose OpenCV thread pool has run can hang in
OpenCV. Spawned workers import the main module again, so a script that runs a stage with more than one worker
keeps its body under `if __name__ == "__main__":` (as scripts/run_stage.py does). Each worker runs one
OpenCV / BLAS / OpenMP thread: the images, not the matrix products, run in parallel (oversubscribed BLAS
threads crawl on small products). `thread_limit` holds a stage's own process to its `threads` the same way.

Results are consumed in order as they complete; at most `window` (default 2 per worker) items are submitted
and not yet consumed, so memory follows `window` images, not the shard. The function and the items are
pickled: module-level functions (or `functools.partial` of them) and plain data.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _init_worker() -> None:
    try:
        import cv2
    except ImportError:  # pragma: no cover - every stage environment has OpenCV
        return
    cv2.setNumThreads(1)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ while the block runs (spawned children and libraries loaded meanwhile read
    them); the previous values (or their absence) back afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """At most `threads` OpenCV, BLAS / OpenMP and PyTorch threads in this process while the block runs, so
    that a job given `threads` cores keeps to them: by default these libraries start one thread per core of
    the machine, and on a busy node the extra threads spin and stall (MCG at `threads: 1` spent about a
    third more CPU time with them). Libraries loaded later read the environment variables set here."""
    import cv2
    from threadpoolctl import threadpool_limits

    n = max(int(threads), 1)
    env = {k: str(n) for k in THREAD_VARS}
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # waiting threads sleep, not spin
    cv_threads = cv2.getNumThreads()
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    cv2.setNumThreads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with _environ(env), threadpool_limits(limits=n):
            yield
    finally:
        cv2.setNumThreads(cv_threads)
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes, each with one BLAS / OpenMP thread."""
    with _environ({k: "1" for k in THREAD_VARS}):  # spawned children read them at start
        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
        # start the processes now, while the variables hold (the executor starts them lazily on submit)
        for f in [ex.submit(int, 0) for _ in range(workers)]:
            f.result()
    return ex


def ordered_map(fn: Callable[..., Any], items: Iterable[tuple], workers: int = 1, *,
                window: int | None = None) -> Iterator[Any]:
    """`fn(*item)` for each item, in the items' order: in this process when `workers` <= 1, else in
    `workers` spawned processes with at most `window` (default 2 * workers) results pending.
    An exception of `fn` is raised here, at its item's turn; the pool is shut down on the way out."""
    if workers <= 1:
        for item in items:
            yield fn(*item)
        return
    it = iter(items)
    window = max(int(window or 2 * workers), 1)
    ex = _spawn_pool(workers)
    pending: collections.deque[Future] = collections.deque()
    try:
        while True:
            while len(pending) < window:
                item = next(it, None)
                if item is None:
                    break
                pending.append(ex.submit(fn, *item))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)


def worker_count(threads: int | None, jobs: int) -> int:
    """Worker processes for `jobs` items with `threads` CPU threads: no more workers than items."""
    return max(1, min(int(threads or 1), int(jobs)))
