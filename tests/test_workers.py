"""Worker processes of a stage: results in order, a bounded number in flight, errors raised, and a stage's
artifact independent of the number of workers."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest

from pseudomask.store import Artifact
from pseudomask.workers import ordered_map, thread_limit, worker_count


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def test_results_in_order_with_a_bounded_window():
    pulled = []

    def items():
        for i in range(12):
            pulled.append(i)
            yield (i,)

    got = []
    for r in ordered_map(_square, items(), workers=2, window=3):
        assert len(pulled) - len(got) <= 3  # never more than the window submitted and not consumed
        got.append(r)
    assert got == [i * i for i in range(12)]
    assert list(ordered_map(_square, [(i,) for i in range(5)], workers=1)) == [0, 1, 4, 9, 16]


def _timed_square(x: int, parent: int, here: float, there: float) -> tuple[int, int, float]:
    """(pid, x * x, clock at the end) after `here` s of sleep in process `parent`, `there` s in a worker."""
    import time

    time.sleep(here if os.getpid() == parent else there)
    return os.getpid(), x * x, time.monotonic()


def _fail_here(x: int, pid: int) -> int:
    if os.getpid() == pid:
        raise ValueError(f"bad item {x}")
    return x


def test_this_process_computes_items_too():
    """threads 2: one spawned worker and this process share the items; the results stay in order."""
    # alone, this process would take 3 s: the worker starts first
    got = list(ordered_map(_timed_square, [(i, os.getpid(), 0.05, 0.02) for i in range(60)], workers=2))
    assert [sq for _, sq, _ in got] == [i * i for i in range(60)]
    pids = {pid for pid, _, _ in got}
    assert os.getpid() in pids and len(pids) == 2


def test_an_error_of_an_item_computed_here_is_raised_at_its_turn():
    seen = []
    with pytest.raises(ValueError, match="bad item") as err:
        for r in ordered_map(_fail_here, [(i, os.getpid()) for i in range(40)], workers=2):
            seen.append(r)
    k = int(str(err.value).split()[-1])
    assert seen == list(range(k))


def test_a_workers_error_is_raised_at_its_item():
    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for r in ordered_map(_fail_on_three, [(i,) for i in range(6)], workers=2):
            seen.append(r)
    assert seen == [0, 1, 2]


class _Counter:
    """State a process keeps across its items (`ordered_map`'s context): how many it computed, how often it
    was entered."""

    def __init__(self, tag: str):
        self.tag, self.items, self.entered = tag, 0, 0

    def __enter__(self) -> "_Counter":
        self.entered += 1
        return self

    def __exit__(self, *exc) -> None:
        self.tag = "closed"


def _count(state: _Counter, x: int, parent: int, there: float) -> tuple[int, str, int, int, int]:
    import time

    time.sleep(0 if os.getpid() == parent else there)
    state.items += 1
    return os.getpid(), state.tag, state.items, state.entered, x * x


def test_each_process_enters_the_context_once_and_keeps_it_across_its_items():
    for workers in (1, 2):
        got = list(ordered_map(_count, [(i, os.getpid(), 0.02) for i in range(30)], workers=workers,
                               context=partial(_Counter, "open")))
        assert [sq for *_, sq in got] == [i * i for i in range(30)]
        assert all(tag == "open" and entered == 1 for _, tag, _, entered, _ in got)
        for pid in {pid for pid, *_ in got}:  # one state per process: its count goes 1, 2, ... over its items
            counts = [n for p, _, n, _, _ in got if p == pid]
            assert sorted(counts) == list(range(1, len(counts) + 1))


def test_thread_limit_holds_the_libraries_to_the_jobs_threads():
    """A stage given `threads` keeps OpenCV and BLAS to that many threads while it runs, then restores them."""
    import cv2
    from threadpoolctl import threadpool_info

    cv_before, omp_before = cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS")
    with thread_limit(1):
        assert cv2.getNumThreads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert cv2.getNumThreads() == cv_before and os.environ.get("OMP_NUM_THREADS") == omp_before


def test_no_more_workers_than_jobs():
    assert worker_count(4, 2) == 2 and worker_count(None, 5) == 1 and worker_count(3, 0) == 1


def _same_artifacts(a_path, b_path):
    with Artifact(a_path) as a, Artifact(b_path) as b:
        assert a.image_ids == b.image_ids
        assert set(a.instances) == set(b.instances)
        for k, col in a.instances.items():
            if col.dtype == object:
                assert list(col) == list(b.instances[k]), k
            else:
                assert np.array_equal(col, b.instances[k], equal_nan=True), k
        for i in a.image_ids:
            assert np.array_equal(a.masks(i), b.masks(i))
        for name in a.map_names():
            for i in a.image_ids:
                ma, mb = a.map(name, i), b.map(name, i)
                assert (ma is None) == (mb is None)
                if isinstance(ma, dict):
                    assert all(np.array_equal(ma[k], mb[k]) for k in ma)


def test_grabcut_artifact_does_not_depend_on_the_number_of_workers(demo_dataset, tmp_path):
    from pseudomask.grabcut import run_grabcut

    one = run_grabcut(demo_dataset, tmp_path / "one.h5", {"iterations": 2}, workers=1)
    three = run_grabcut(demo_dataset, tmp_path / "three.h5", {"iterations": 2}, workers=3)
    _same_artifacts(one, three)


def test_mcg_artifact_does_not_depend_on_the_number_of_workers(demo_dataset, tmp_path):
    from pseudomask.dataset import Dataset
    from pseudomask.mcg.boxes import run_mcg

    ids = {im["id"] for im in demo_dataset.images[:4]}
    ds = Dataset(categories=demo_dataset.categories, images=demo_dataset.images[:4],
                 instances=[r for r in demo_dataset.instances if r["image_id"] in ids], image_root=demo_dataset.image_root)
    one = run_mcg(ds, tmp_path / "one.h5", workers=1, max_proposals=100)
    two = run_mcg(ds, tmp_path / "two.h5", workers=2, max_proposals=100)
    _same_artifacts(one, two)
    # agree's workers read the masks of both sources themselves
    from pseudomask.agree import run_agree
    from pseudomask.grabcut import run_grabcut

    gc = run_grabcut(ds, tmp_path / "gc.h5", {"iterations": 1}, workers=1)
    _same_artifacts(run_agree(gc, one, tmp_path / "agree1.h5", workers=1),
                    run_agree(gc, one, tmp_path / "agree2.h5", workers=2))


def test_merge_drop_artifact_does_not_depend_on_the_number_of_workers(demo_dataset, tmp_path):
    from pseudomask.grabcut import run_grabcut
    from pseudomask.merge_drop import merge_drop

    src = run_grabcut(demo_dataset, tmp_path / "gc.h5", {"iterations": 1}, workers=1)
    one = merge_drop(src, tmp_path / "one.h5", workers=1)
    two = merge_drop(src, tmp_path / "two.h5", workers=2)
    assert one == two
    _same_artifacts(tmp_path / "one.h5", tmp_path / "two.h5")


def test_this_process_computes_ahead_while_the_workers_start():
    """With the default window this process does not stop at 4 items per process until a spawned worker's
    first result is ready (its interpreter's start, a second or so, and its first item): it goes on
    computing, up to 16 per process, meanwhile."""
    # a worker's first result comes late, however fast it starts
    done = list(ordered_map(_timed_square, [(i, os.getpid(), 0.01, 0.5) for i in range(40)], workers=2))
    first = min(t for p, _, t in done if p != os.getpid())  # the worker's first result
    ahead = sum(p == os.getpid() and t < first for p, _, t in done)
    assert 8 < ahead <= 32  # beyond the steady window of 8, within the start window of 32


def test_this_process_takes_back_the_items_queued_for_a_worker_that_has_not_started_them():
    """Where it would wait for the worker (here: items instant in this process, slow in the worker), this
    process computes the items queued for the worker that the executor has not handed to it yet; the worker
    keeps at most those it runs or has in its call queue (one running and two queued), not all four queued."""
    got = list(ordered_map(_timed_square, [(i, os.getpid(), 0.0, 0.5) for i in range(12)], workers=2))
    assert [sq for _, sq, _ in got] == [i * i for i in range(12)]
    assert sum(pid != os.getpid() for pid, _, _ in got) <= 3
