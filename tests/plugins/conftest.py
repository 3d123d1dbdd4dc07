"""Fixtures shared by the plugin tests."""

import pytest

from tests.plugins.observed_cluster import observed_cluster


@pytest.fixture(scope="session")
def observed(tmp_path_factory):
    """One real cluster for the dashboard and metrics tests (observed_cluster.py):
    the demo model loaded, a slow replication under way."""
    with observed_cluster(tmp_path_factory.mktemp("observed")) as obs:
        yield obs
