"""The documentation's examples run against the integration tests' real tritonserver.

The session fixtures are imported from the integration conftest (a non-root conftest cannot
name it in ``pytest_plugins``), so these tests get the same kind of server, key and ports.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import triton, triton_key  # noqa: F401  (fixtures)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/docs" in str(item.path):
            item.add_marker(pytest.mark.integration)
