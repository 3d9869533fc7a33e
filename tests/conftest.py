"""Shared fixtures: a fresh local repository per test, and the S3 server plugin."""

from __future__ import annotations

import pytest

import casstore

pytest_plugins = ["tests.s3server"]


@pytest.fixture
def repo_dir(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def store(repo_dir):
    s = casstore.open(str(repo_dir))
    yield s
    s.close()
