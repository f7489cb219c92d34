"""Shared fixtures: a small demo dataset rendered once per test session (no external data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PSEUDOMASK_NO_PROGRESS", "1")
# idle OpenMP threads spin by default and stall torch on a busy 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """Folder with annotations.json, images/ and salient/ of 8 demo scenes (seed 0)."""
    from pseudomask.demo import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, n_images=8, seed=0, n_salient=8)
    return out


@pytest.fixture(scope="session")
def demo_dataset(demo):
    from pseudomask.dataset import load_dataset

    return load_dataset(demo / "annotations.json", demo / "images")


@pytest.fixture(scope="session")
def demo_shard(demo, tmp_path_factory) -> Path:
    """The 8 demo scenes ingested as one shard record (ingest artifact)."""
    from pseudomask.ingest import ingest

    out = tmp_path_factory.mktemp("ingest")
    ingest(demo / "annotations.json", demo / "images", out, shard_size=100)
    return out / "s00000.h5"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small convolutions gain nothing from a second thread and lose much when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
