"""limit_blas_threads sets numpy's OpenBLAS to one thread, and leaves an explicit setting alone."""

from __future__ import annotations

import numpy as np
import pytest

from mlapi_backend import blas_threads


@pytest.fixture
def restore_threads():
    before = blas_threads.blas_threads()
    yield before
    for path, count in before.items():
        blas_threads._function(path, blas_threads.SETTERS)(count)


def test_numpys_openblas_is_found_and_limited(monkeypatch, restore_threads):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    np.ones((64, 64)) @ np.ones((64, 64))  # OpenBLAS is loaded with numpy itself
    if not restore_threads:
        pytest.skip("this numpy is not built on OpenBLAS")
    assert blas_threads.limit_blas_threads(1) == restore_threads
    assert set(blas_threads.blas_threads().values()) == {1}


def test_an_explicit_openblas_num_threads_wins(monkeypatch, restore_threads):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert blas_threads.limit_blas_threads(1) == {}
    assert blas_threads.blas_threads() == restore_threads


def test_no_openblas_or_no_proc_means_nothing_to_limit(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(blas_threads, "MAPS", tmp_path / "missing")
    assert blas_threads.loaded_openblas() == []
    assert blas_threads.limit_blas_threads(1) == {}
