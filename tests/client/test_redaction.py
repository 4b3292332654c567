"""Redaction: personal data becomes typed placeholders; ordinary text is left alone."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from client._redaction import MAX_PROMPT_CHARS, redact
from tests.client.conftest import MakeTelemetry

# Test fixtures only: none of these credentials is real.
_GH = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
_GH_PAT = "github_pat_" + "11ABCDEFG0abcdefghijkl_" + "mnopqrstuvwxyz0123456789ABCDEFGHIJKLMN"
_OPENAI = "sk-" + "proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv"
_ANTHROPIC = "sk-" + "ant-api03-abcDEF123ghiJKL456mnoPQR"
_STRIPE = "sk_" + "live_4eC39HqLyjWDarjtT1zdp7dc"
_SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
_AWS = "AKIA" + "IOSFODNN7EXAMPLE"
_GOOGLE = "AIza" + "SyD-abcdefghijklmnopqrstuvwxyz01234"
_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # e-mail
        ("contact alice.smith+ai@example.co.uk now", "contact <EMAIL> now"),
        ("From: Bob <bob_99@mail.example.org>", "From: Bob <<EMAIL>>"),
        ("two: a@b.io, c.d@e-f.com", "two: <EMAIL>, <EMAIL>"),
        # phone numbers
        ("call +1 (415) 555-0100 today", "call <PHONE> today"),
        ("call +44 20 7946 0958", "call <PHONE>"),
        ("mobile +49 151 12345678.", "mobile <PHONE>."),
        ("whatsapp +4915112345678", "whatsapp <PHONE>"),
        ("US (415) 555-0100", "US <PHONE>"),
        ("US 415-555-0100 or 415.555.0100", "US <PHONE> or <PHONE>"),
        ("UK 020 7946 0958", "UK <PHONE>"),
        ("UK mobile 07700 900123", "UK mobile <PHONE>"),
        ("Berlin 030 12345678", "Berlin <PHONE>"),
        ("Wien 0664-1234567", "Wien <PHONE>"),
        ("Paris 01 23 45 67 89", "Paris <PHONE>"),
        # home folders: the user name goes, the rest of the path stays
        ("open /home/alice/projects/x.py", "open /home/<USER>/projects/x.py"),
        ("at /Users/bob.jones/Library/Logs", "at /Users/<USER>/Library/Logs"),
        (r"C:\Users\Carol\AppData\Local\app.log", r"C:\Users\<USER>\AppData\Local\app.log"),
        (r"C:\Users\John Smith\Documents\a.txt", r"C:\Users\<USER>\Documents\a.txt"),
        (r'{"path": "D:\\Users\\dave\\x"}', r'{"path": "D:\\Users\\<USER>\\x"}'),
        ("c:/Users/erin/Desktop", "c:/Users/<USER>/Desktop"),
        ("file:///home/frank/notes.md", "file:///home/<USER>/notes.md"),
        ("/var/home/gina/.config", "/var/home/<USER>/.config"),
        ("cd /home/hank", "cd /home/<USER>"),
        # credentials
        (f"key {_AWS} leaked", "key <AWS_KEY> leaked"),
        (f"token {_GH}", "token <GITHUB_TOKEN>"),
        (f"pat {_GH_PAT}", "pat <GITHUB_TOKEN>"),
        (f"OPENAI_API_KEY={_OPENAI}", "OPENAI_API_KEY=<API_KEY>"),
        (f"using {_ANTHROPIC}", "using <API_KEY>"),
        (f"stripe {_STRIPE}", "stripe <API_KEY>"),
        (f"maps {_GOOGLE}", "maps <API_KEY>"),
        (f"slack {_SLACK}", "slack <SLACK_TOKEN>"),
        (f"jwt={_JWT}", "jwt=<JWT>"),
        (f"Authorization: Bearer {_JWT}", "Authorization: Bearer <JWT>"),
        ("Authorization: Bearer abc123DEF456ghi789", "Authorization: Bearer <TOKEN>"),
        ("authorization: bearer 0f1e2d3c4b5a69788796", "authorization: bearer <TOKEN>"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic <TOKEN>"),
        ("password=hunter2", "password=<SECRET>"),
        ("db_password: 'swordfish'", "db_password: '<SECRET>'"),
        ('{"api_key": "3f9a1c0be4d27a86f51c"}', '{"api_key": "<SECRET>"}'),
        (
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key=<SECRET>",
        ),
        ("GET /cb?access_token=a1b2c3d4e5f6a7b8c9d0&x=1", "GET /cb?access_token=<SECRET>&x=1"),
        ("client-secret = Zm9vYmFyYmF6cXV4MTIz", "client-secret = <SECRET>"),
        ("https://bob:s3cr3t@db.example.net/x", "https://<USER>:<SECRET>@db.example.net/x"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY----- ok",
            "<PRIVATE_KEY> ok",
        ),
        # network addresses
        ("from 192.168.1.23 port 22", "from <IPV4> port 22"),
        ("peer 8.8.8.8.", "peer <IPV4>."),
        ("v6 2001:db8:85a3::8a2e:370:7334 up", "v6 <IPV6> up"),
        ("loopback ::1 and fe80::1%eth0", "loopback <IPV6> and <IPV6>"),
        ("[2001:db8::1]:8443", "[<IPV6>]:8443"),
        ("mapped ::ffff:192.0.2.1", "mapped <IPV6>"),
        ("nic 00:1A:2B:3C:4D:5E", "nic <MAC>"),
        # payment cards (Luhn-valid test numbers)
        ("card 4111 1111 1111 1111 exp", "card <CARD> exp"),
        ("card 5555-5555-5555-4444", "card <CARD>"),
        ("amex 378282246310005", "amex <CARD>"),
    ],
)
def test_personal_data_is_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "model qwen2.5-7b@1.1 answered in 1.28 s",
        "version 1.2.3, build 10.0.19045.3803, python 3.11.9",
        "2026-11-27T12:30:45Z",
        "2026-11-27 12:30:45,123 INFO started",
        "on 05/01/2024 and 05-01-2024 at 09:30",
        "epoch 1714567890 and 1714567890123 ms",
        "request id 123456789012345 and 4111111111111112",  # second fails Luhn
        "order 1234-5678",
        "took 12345 ms, 3 of 100 tokens, max_tokens=256, top_p=0.95",
        "token: 256 and tokens=1024",
        "sort key=name; primary key: organization_name",
        "Token verification failed; Bearer authentication required",
        "Basic Authentication is enabled",
        "see std::vector and Foo::Bar::baz",
        "ratio 16:9, score 3:1, 1:2:3",
        "https://example.com/home/index.html",
        "/usr/local/bin/python and /opt/app/Users.txt",
        r"C:\Users\Public\Documents and C:\Program Files\App",
        "price +5 points, 50% off, -3 degrees",
        "the task-force met; use @property and user@localhost",
        "hash 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert redact(text) == text


def test_a_log_line_keeps_its_shape() -> None:
    line = (
        "2026-11-27 12:30:45 ERROR user=alice@example.com ip=10.1.2.3 "
        "file=/home/alice/app/run.py token=ghp_" + "x" * 36 + " took 1.5s"
    )
    assert redact(line) == (
        "2026-11-27 12:30:45 ERROR user=<EMAIL> ip=<IPV4> "
        "file=/home/<USER>/app/run.py token=<GITHUB_TOKEN> took 1.5s"
    )


def test_redaction_is_idempotent() -> None:
    text = f"mail a@b.com from +44 20 7946 0958 with {_OPENAI} at /Users/zoe/x"
    once = redact(text)
    assert redact(once) == once
    assert "zoe" not in once
    assert "7946" not in once


def test_empty_and_unicode_text() -> None:
    assert redact("") == ""
    assert redact("héllo wörld → ✓") == "héllo wörld → ✓"
    assert redact("mail: jürgen@exämple.de") == "mail: <EMAIL>"


# Inputs that made a pattern rescan a long run once per position (quadratic time): a
# 40,000-character `a_a_...` took 33 s before, about 30 ms now.
_ADVERSARIAL = {
    "letters": "a" * 40_000,
    "underscores": "a_" * 20_000,
    "hyphens": "a-" * 20_000,
    "dots": "a." * 20_000,
    "plus": "a+" * 20_000,
    "schemes": "a://b:" * 7_000,
    "mail": "a@" * 20_000,
    "keys": "key=" * 10_000,
}


@pytest.mark.parametrize("name", sorted(_ADVERSARIAL))
def test_redaction_runs_in_linear_time_on_adversarial_text(name: str) -> None:
    """Timed against a plain regex scan of the same text, in the same process: only the
    ratio matters (the machine's speed cancels), and a quadratic pattern is thousands
    of times slower than linear at this length, far past the bound."""
    text = _ADVERSARIAL[name]
    scan = re.compile(r"\w+")

    def best(run: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    baseline = best(lambda: scan.findall(text))
    assert best(lambda: redact(text)) < 400 * baseline + 0.05


def test_a_prompt_over_the_limit_is_dropped_and_counted(make_telemetry: MakeTelemetry) -> None:
    qw = make_telemetry()
    assert qw.record_prompt("x" * (MAX_PROMPT_CHARS + 1)) == ""
    assert qw.dropped() == {"prompt_too_long": 1}
