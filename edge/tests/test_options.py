"""One parser for the edge's options (edge/options.py): one environment name per setting,
the same for `python -m edge`, `manage.py runedge` and `manage.py runplatform`."""

import pytest

from edge.options import (
    ENVIRONMENT,
    RETIRED,
    UsageError,
    build_parser,
    options_from_environment,
    options_from_namespace,
)

REQUIRED = ["--node", "n", "--token", "t", "--snapshot", "s.json", "--journal-dir", "j"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in [*ENVIRONMENT.values(), *RETIRED]:
        monkeypatch.delenv(name, raising=False)


def parse(*argv: str):
    return options_from_namespace(build_parser().parse_args([*REQUIRED, *argv]))


def test_every_setting_has_one_name_and_no_retired_one_is_read():
    assert len(set(ENVIRONMENT.values())) == len(ENVIRONMENT)
    assert not set(RETIRED) & set(ENVIRONMENT.values())
    assert set(RETIRED.values()) <= set(ENVIRONMENT.values())


@pytest.mark.parametrize("old, new", sorted(RETIRED.items()))
def test_a_retired_name_is_refused_with_the_new_one(monkeypatch, old, new):
    monkeypatch.setenv(old, "127.0.0.1:5070")
    with pytest.raises(UsageError, match=f"{old} is no longer read: set {new}"):
        parse()


def test_the_default_challenge_order_is_md5_first_and_the_environment_can_change_it(monkeypatch):
    assert parse().digest_algorithms == ("MD5", "SHA-256")
    monkeypatch.setenv("EDGE_DIGEST_ALGORITHMS", "SHA-256, MD5")
    assert parse().digest_algorithms == ("SHA-256", "MD5")
    assert parse("--digest-algorithms", "MD5").digest_algorithms == ("MD5",)
    monkeypatch.setenv("EDGE_DIGEST_ALGORITHMS", "SHA-512")
    with pytest.raises(UsageError, match="--digest-algorithms"):
        parse()


def test_a_certificate_turns_tls_on_beside_the_sip_host(tmp_path):
    options = parse("--sip", "192.0.2.1:5070", "--cert", "c.pem", "--key", "k.pem")
    assert options.tls == ("192.0.2.1", 5061)
    assert parse("--cert", "c.pem", "--key", "k.pem", "--tls", ":5062").tls == ("0.0.0.0", 5062)
    assert parse().tls is None


def test_runplatform_reads_the_same_variables_over_its_own_defaults(monkeypatch, tmp_path):
    defaults = {"node": "embedded", "token": "-", "snapshot_url": "http://127.0.0.1:8000/x",
                "journal_dir": str(tmp_path), "limit_share": 2}  # fmt: skip
    options = options_from_environment(defaults)
    assert (options.node, options.sip, options.limit_share) == ("embedded", ("127.0.0.1", 5060), 2)
    assert options.digest_algorithms == ("MD5", "SHA-256")
    monkeypatch.setenv("EDGE_SIP_ADDRESS", "127.0.0.2:5080")
    monkeypatch.setenv("EDGE_NODE_NAME", "edge-9")
    monkeypatch.setenv("EDGE_DIGEST_ALGORITHMS", "SHA-256,MD5")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    options = options_from_environment(defaults)
    assert (options.node, options.sip) == ("edge-9", ("127.0.0.2", 5080))
    assert options.digest_algorithms == ("SHA-256", "MD5")
    assert options.redis_url == "redis://127.0.0.1:1/0"


def test_the_stall_dump_is_off_unless_given_in_ms(monkeypatch):
    assert parse().stall_dump == 0.0
    assert parse("--stall-dump", "40").stall_dump == 40.0
    monkeypatch.setenv("EDGE_STALL_DUMP_MS", "25")
    assert parse().stall_dump == 25.0
    for bad in ("-1", "soon"):
        with pytest.raises(UsageError, match="--stall-dump"):
            parse("--stall-dump", bad)


def test_the_allocator_is_jemalloc_unless_another_is_asked_for(monkeypatch):
    assert parse().allocator == "jemalloc"
    assert parse("--allocator", "pymalloc").allocator == "pymalloc"
    monkeypatch.setenv("EDGE_ALLOCATOR", "PyMalloc")
    assert parse().allocator == "pymalloc"
    assert parse("--allocator", "malloc").allocator == "malloc"  # the command line wins
    assert parse("--allocator", "JEMALLOC").allocator == "jemalloc"
    with pytest.raises(
        UsageError, match="--allocator: one of malloc, pymalloc, jemalloc, not 'tcmalloc'"
    ):
        parse("--allocator", "tcmalloc")
