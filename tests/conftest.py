"""Shared test configuration: figures measured by tests are printed in the terminal summary."""

from __future__ import annotations

from typing import Any

import pytest

_FIGURES: list[tuple[str, Any]] = []


@pytest.fixture
def report_figure():
    """Record a measured figure (e.g. an accuracy or a rate) to print after the run."""

    def record(name: str, value: Any) -> None:
        _FIGURES.append((name, value))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("measured figures")
        for name, value in _FIGURES:
            terminalreporter.write_line(f"{name}: {value}")
