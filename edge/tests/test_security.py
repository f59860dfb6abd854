"""Abuse handling: scanners dropped, floods answered less then banned, brute force banned."""

import re

from edge.security import AbuseGuard, AbuseSettings, SecurityEvent, Verdict

SETTINGS = AbuseSettings(
    window=10,
    unauthenticated_limit=5,
    answer_one_in=3,
    ban_after_unauthenticated=20,
    ban_after_auth_failures=3,
    ban_seconds=60,
    max_sources=100,
)


def test_known_scanners_are_dropped_and_logged():
    guard = AbuseGuard(SETTINGS)
    verdict, event = guard.unauthenticated("192.0.2.1", "friendly-scanner", 0.0)
    assert verdict is Verdict.DROP and event == SecurityEvent(
        "scanner", "192.0.2.1", "friendly-scanner"
    )
    assert guard.unauthenticated("192.0.2.1", "Linphone/5.2", 0.0) == (Verdict.PROCESS, None)


def test_a_flood_is_answered_less_then_banned_and_the_ban_ends():
    guard = AbuseGuard(SETTINGS)
    verdicts = [guard.unauthenticated("192.0.2.2", None, 1.0) for _ in range(25)]
    answered = [v for v, _ in verdicts if v is Verdict.PROCESS]
    # 5 in full, then one in three of requests 6..19; from the 20th the source is banned.
    assert len(answered) == 5 + len(range(3, 15, 3))
    events = [e.kind for _, e in verdicts if e is not None]
    assert events == ["flood", "banned"]
    assert guard.banned("192.0.2.2", 30.0) and not guard.banned("192.0.2.2", 62.0)
    assert guard.unauthenticated("192.0.2.2", None, 62.0) == (Verdict.PROCESS, None)
    assert guard.unauthenticated("192.0.2.3", None, 1.0) == (Verdict.PROCESS, None)  # others: fine


def test_counts_start_again_each_window():
    guard = AbuseGuard(SETTINGS)
    for second in range(0, 100, 10):
        for _ in range(5):
            assert guard.unauthenticated("192.0.2.4", None, float(second))[0] is Verdict.PROCESS


def test_repeated_auth_failures_ban():
    guard = AbuseGuard(SETTINGS)
    assert [e.kind for e in guard.auth_failed("192.0.2.5", "pbx1", 0)] == ["auth_failed"]
    guard.auth_failed("192.0.2.5", "pbx1", 1)
    assert [e.kind for e in guard.auth_failed("192.0.2.5", "admin", 2)] == ["auth_failed", "banned"]
    assert guard.unauthenticated("192.0.2.5", None, 3)[0] is Verdict.DROP


def test_memory_is_bounded():
    guard = AbuseGuard(SETTINGS)
    for n in range(500):
        guard.unauthenticated(f"10.0.{n // 256}.{n % 256}", None, 0.0)
    assert len(guard._sources) == SETTINGS.max_sources


def test_log_line_is_one_fixed_format_line_for_fail2ban():
    line = SecurityEvent("auth_failed", "203.0.113.9", "user=x\r\nforged").log_line()
    assert "\n" not in line and "\r" not in line
    assert (
        re.match(r"^trunkline-security event=\S+ src=(?P<host>\S+) .*$", line)["host"]
        == "203.0.113.9"
    )


def test_a_source_that_authenticated_is_not_a_flood():
    guard = AbuseGuard(SETTINGS)
    guard.authenticated("192.0.2.6", 0.0)
    assert all(
        guard.unauthenticated("192.0.2.6", None, 1.0)[0] is Verdict.PROCESS for _ in range(50)
    )
