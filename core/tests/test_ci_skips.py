"""The root conftest.py turns a skip of a Redis or PostgreSQL test into a failure where the
service should be there (CI=true, or its URL set): CI cannot pass with those suites left out."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
SKIPPING = """
import pytest

@pytest.mark.needs("redis")
def test_redis():
    pytest.skip("no Redis here")

@pytest.mark.needs("postgres")
def test_postgres():
    pytest.skip("SQLite")

@pytest.mark.needs("redis", "postgres")
def test_both():
    pytest.skip("SQLite")

def test_other():
    pytest.skip("not a service")
"""


@pytest.fixture
def run(pytester, monkeypatch):
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile(test_skipping=SKIPPING)
    for name in ("CI", "REDIS_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)

    def run(**environment: str):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return pytester.runpytest_subprocess("-p", "no:django", "-p", "no:cacheprovider", "-rA")

    return run


def test_without_the_services_the_skips_stay_skips(run):
    run().assert_outcomes(skipped=4)


def test_a_set_url_makes_its_suites_skip_a_failure(run):
    result = run(REDIS_URL="redis://127.0.0.1:1/0")
    result.assert_outcomes(failed=1, skipped=3)  # test_both may skip: no DATABASE_URL
    result.stdout.fnmatch_lines(["*test_redis*skipped although redis should be there*"])


def test_ci_makes_every_service_skip_a_failure(run):
    run(CI="true").assert_outcomes(failed=3, skipped=1)
