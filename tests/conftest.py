"""Shared fixtures: the real third-party data in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data next to the repo, or $VLM_SHARED_DATA."""
    return Path(os.environ.get("VLM_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.fail(f"real test data not found at {path}: set VLM_SHARED_DATA")
    return path
