"""Test set-up for the whole repository: Django's shared fixtures live in core/testing.py.

Tests marked ``needs("redis")`` / ``needs("postgres")`` (or both) may skip on a laptop without
the services, but not where they should be there: when ``CI=true``, or when the URL of every
service the test needs (``REDIS_URL``, ``DATABASE_URL``) is set, such a skip is reported as a
failure. One rule for
every suite, so CI cannot pass with the Redis or PostgreSQL tests silently left out.
"""

import os
from collections.abc import Generator
from typing import Any

import pytest

SERVICE_URLS = {"redis": "REDIS_URL", "postgres": "DATABASE_URL"}


def pytest_configure(config: pytest.Config) -> None:
    # Without pytest-django (`-p no:django`) only the Django-free tests (edge/) can run.
    if config.pluginmanager.hasplugin("django"):
        config.pluginmanager.import_plugin("core.testing")


def expected_services() -> set[str]:
    """The services this run must have: all under CI, else those whose URL is set."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return set(SERVICE_URLS)
    return {service for service, name in SERVICE_URLS.items() if os.environ.get(name)}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    needed = {service for marker in item.iter_markers("needs") for service in marker.args}
    if needed and needed <= expected_services():  # every service it needs should be there
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        services = sorted(needed)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped although {' and '.join(services)} should be there "
            f"(CI=true or {', '.join(SERVICE_URLS[s] for s in services)} set): {reason}"
        )
