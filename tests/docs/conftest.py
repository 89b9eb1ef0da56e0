"""The documentation's examples run against the integration tests' real tritonserver.

The session server and key come from tests/conftest.py: the same server the integration tests
use when both run in one session.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _every_client_finds_the_key(triton_key: str) -> None:
    """The session key (tests/conftest.py) is in the environment of every docs test."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/docs" in str(item.path):
            item.add_marker(pytest.mark.integration)
