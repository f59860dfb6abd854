"""Test set-up for the whole repository: Django's shared fixtures live in core/testing.py."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Without pytest-django (`-p no:django`) only the Django-free tests (edge/) can run.
    if config.pluginmanager.hasplugin("django"):
        config.pluginmanager.import_plugin("core.testing")
