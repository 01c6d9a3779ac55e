"""Fixtures of the chart tests: the chart, offline renders of every value set, renders against a fake cluster."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import helm_python
import pytest

from chartlib import CHART_DIR, NAMESPACE, RELEASE, VALUE_SETS, FakeApiServer, Render, values_for


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> Callable[..., Render]:
    """Renders offline (`lookup` finds nothing, as on a first install or `helm template`)."""

    def do(values: dict[str, Any], *, namespace: str = NAMESPACE, name: str = RELEASE) -> Render:
        return Render(chart.render(values, name=name, namespace=namespace, is_install=True))

    return do


@pytest.fixture(scope="session")
def rendered(render: Callable[..., Render]) -> dict[str, Render]:
    """Every value set, rendered once for the session."""
    return {name: render(values_for(name)) for name in VALUE_SETS}


@pytest.fixture
def render_upgrade(chart: helm_python.Chart) -> Callable[..., Render]:
    """Renders as an upgrade against a cluster holding `existing` objects (Helm's `lookup` finds them)."""

    def do(values: dict[str, Any], existing: list[dict[str, Any]]) -> Render:
        with FakeApiServer(existing) as api:
            with helm_python.Config(kubeconfig_content=api.kubeconfig, namespace=NAMESPACE) as config:
                manifests = config.render(chart, values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
        return Render(manifests)

    return do
