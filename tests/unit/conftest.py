"""Fixtures the deployment tests share (docker-compose, Dockerfile, Kubernetes)."""

from __future__ import annotations

import pytest

from tests.unit.test_deployment_files import Dockerfile, _answered_pages, _dockerfile


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return _dockerfile()


@pytest.fixture(scope="module")
def worker_pages() -> set[str]:
    """The paths the worker's web server really answers."""
    return _answered_pages()
