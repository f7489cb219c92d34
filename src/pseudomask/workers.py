"""Worker processes for a stage's images: `ordered_map` runs a function over items in this process and spawned
ones and yields the results in the items' order, with a bounded number in flight.

Workers are spawned, not forked: a child forked from a process whose OpenCV thread pool has run can hang in
OpenCV. Spawned workers import the main module again, so a script that runs a stage with more than one worker
keeps its body under `if __name__ == "__main__":` (as scripts/run_stage.py does). Each computing process
(this one too, while `ordered_map` runs) uses one OpenCV / BLAS / OpenMP thread: the images, not the matrix
products, run in parallel (oversubscribed BLAS threads crawl on small products). `thread_limit` holds a
stage's own process to its `threads` the same way.

Results are consumed in order as they complete; at most `window` (default 4 per process, 16 while the
spawned workers start) items are taken and not yet consumed, so memory follows `window` images, not the
shard. The function and the items are pickled: module-level functions (or `functools.partial` of them) and
plain data, pickled anew for each item; what a process keeps across its items (open input files) is
`ordered_map`'s `context`, entered once per process.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.util
import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

START_WINDOW = 16  # items per process taken ahead while the spawned workers start (see ordered_map)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


_WORKER_CONTEXT: Any = None  # a spawned worker's value of `ordered_map`'s context, entered at the worker's start


def _init_worker(context: Callable[[], ContextManager[Any]] | None = None) -> None:
    """A spawned worker's start: one OpenCV thread, and `context()` entered for the worker's life (exited when
    the worker ends with the pool)."""
    global _WORKER_CONTEXT
    try:
        import cv2  # here, not at the top: the CLI imports this module (through registry) and starts faster without
    except ImportError:  # pragma: no cover - every stage environment has OpenCV
        pass
    else:
        cv2.setNumThreads(1)
    if context is not None:
        stack = contextlib.ExitStack()
        _WORKER_CONTEXT = stack.enter_context(context())
        multiprocessing.util.Finalize(None, stack.close, exitpriority=0)


def _in_worker(fn: Callable[..., Any], *item: Any) -> Any:
    """`fn(value, *item)` in a spawned worker, `value` that of the context the worker entered at its start."""
    return fn(_WORKER_CONTEXT, *item)


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
    import cv2  # here, not at the top: the CLI imports this module (through registry) and starts faster without
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


def _spawn_pool(workers: int, context: Callable[[], ContextManager[Any]] | None = None) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes, each with one BLAS / OpenMP thread (and `context` entered)."""
    with _environ({k: "1" for k in THREAD_VARS}):  # spawned children read them at start
        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                 initargs=(context,))
        # each submit starts a process (the executor starts them lazily), whose environment is copied at its
        # start: started now, while the variables hold; no need to wait for their imports
        for _ in range(workers):
            ex.submit(int, 0)
    return ex


def ordered_map(fn: Callable[..., Any], items: Iterable[tuple], workers: int = 1, *, window: int | None = None,
                context: Callable[[], ContextManager[Any]] | None = None) -> Iterator[Any]:
    """`fn(*item)` for each item, in the items' order, computed by `workers` processes: this one and
    `workers` - 1 spawned ones. Each spawned worker has up to four items queued; this process computes the
    next item itself whenever the result due next is not ready (and, with none to take, an item queued for a
    worker that the worker has not started, so the shard's end is not left to one process), so a job of
    `threads: N` keeps N processes busy (not N workers and a waiting parent) and starts one interpreter
    fewer. At most `window` (default 4 * workers) items are taken and not yet yielded; with the default, up
    to START_WINDOW * workers until a spawned worker's first result is ready, so that this process computes
    cheap items rather than wait out the workers' start (an interpreter and the stage's imports, about a
    second). An exception of `fn` is raised here, at its item's turn; the pool is shut down on the way out.

    `context` (picklable, e.g. a class and its arguments) keeps state per process across its items, such as
    open input files: each computing process enters one `context()`, this one while the map runs, a spawned
    worker for its life, and `fn` is called as `fn(value, *item)` with the value that process's gave."""
    with contextlib.ExitStack() as stack:
        here = fn if context is None else partial(fn, stack.enter_context(context()))
        if workers <= 1:
            for item in items:
                yield here(*item)
            return
        there = fn if context is None else partial(_in_worker, fn)
        yield from _pool_map(here, there, iter(items), workers, window, context)


def _pool_map(here: Callable[..., Any], there: Callable[..., Any], it: Iterator[tuple], workers: int,
              window: int | None, context: Callable[[], ContextManager[Any]] | None) -> Iterator[Any]:
    """`ordered_map` with spawned workers: `here(*item)` computes an item in this process, `there(*item)` in a
    worker."""
    start_window = max(int(window), 1) if window else START_WINDOW * workers
    window = max(int(window or 4 * workers), 1)
    queued = 4 * (workers - 1)  # per worker: enough not to run dry while this process computes an item
    ex = _spawn_pool(workers - 1, context)
    pending: collections.deque[Future] = collections.deque()
    queued_items: dict[Future, tuple] = {}  # the spawned workers' futures in `pending`, with their items
    exhausted = False
    started = False  # a spawned worker's first result seen

    def take() -> tuple | None:
        nonlocal exhausted
        item = None if exhausted else next(it, None)
        exhausted = item is None
        return item

    try:
        with thread_limit(1):  # like the spawned workers: the images, not the libraries' threads, in parallel
            while True:
                while len(pending) < window and sum(not f.done() for f in pending) < queued:
                    item = take()
                    if item is None:
                        break
                    f = ex.submit(there, *item)
                    queued_items[f] = item
                    pending.append(f)
                if not pending:
                    return
                if not started:  # a spawned worker's first result: its interpreter is up
                    started = any(f.done() for f in queued_items)
                if not pending[0].done():
                    item = take() if len(pending) < (window if started else start_window) else None
                    if item is not None:
                        pending.append(_here(here, item))
                        continue
                    if _steal(pending, queued_items, here):
                        continue
                queued_items.pop(pending[0], None)
                yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)


def _steal(pending: collections.deque[Future], queued_items: dict[Future, tuple], fn: Callable[..., Any]) -> bool:
    """Compute here the newest item queued for a spawned worker and not yet started, in its place in `pending`
    (its future cancelled): where this process would wait (at the end of a shard, or with the window full), it
    computes the workers' queued items instead. False when every queued item has started."""
    for i in range(len(pending) - 1, -1, -1):
        f = pending[i]
        if f in queued_items and f.cancel():
            pending[i] = _here(fn, queued_items.pop(f))
            return True
    return False


def _here(fn: Callable[..., Any], item: tuple) -> Future:
    """`fn(*item)` computed in this process, as a finished Future (its exception kept for its turn)."""
    f: Future = Future()
    try:
        f.set_result(fn(*item))
    except Exception as e:  # raised where the item's result is taken, as a worker's would be
        f.set_exception(e)
    return f


def worker_count(threads: int | None, jobs: int) -> int:
    """Worker processes for `jobs` items with `threads` CPU threads: no more workers than items."""
    return max(1, min(int(threads or 1), int(jobs)))
