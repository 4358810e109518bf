"""Shared pytest fixtures: isolated caches, the repository paths, real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Every test gets its own BFR_HOME and Hugging Face cache, and never the network."""
    base = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("BFR_HOME", str(base / "bfr"))
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(base / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("BFR_MODELS_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    yield base
    from bfr_core.weights import unload_all

    unload_all()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real faces and detector weights); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (it lives beside the repository, never inside it)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other jobs for the cores); for a module:
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
