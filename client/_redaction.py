"""Redaction of personal data from text, before anything content-derived is stored.

`redact(text)` replaces each finding with a typed placeholder, so the text stays
readable ("login failed for <EMAIL>") and analytics can count kinds of findings:

    <PRIVATE_KEY>  PEM private key blocks
    <JWT>          JSON Web Tokens (eyJ....eyJ....sig)
    <AWS_KEY>      AWS access key ids (AKIA/ASIA/ABIA/ACCA + 16)
    <GITHUB_TOKEN> ghp_/gho_/ghu_/ghs_/ghr_ tokens and github_pat_ tokens
    <API_KEY>      OpenAI/Anthropic-style sk-..., Stripe sk_/rk_live/test, Google AIza...
    <SLACK_TOKEN>  xoxb-/xoxp-/xoxa-/xoxr-/xoxs-/xoxo- tokens
    <TOKEN>        the credential after "Bearer " / "Basic " / "Token "
    <SECRET>       the value after key=/token=/secret=/password=... (also JSON "key": "v"),
                   and URL credentials (scheme://<USER>:<SECRET>@host)
    <EMAIL>        e-mail addresses
    <USER>         the user name in /home/NAME, /Users/NAME, C:\\Users\\NAME (rest of path kept)
    <CARD>         payment card numbers, 13 to 19 digits, Luhn-checked
    <IPV6> <MAC>   IPv6 addresses (validated by `ipaddress`), MAC addresses
    <IPV4>         IPv4 addresses
    <PHONE>        phone numbers: +CC international, and common national layouts

Rules run in that order: specific credentials before generic ones, and numbers that look
like addresses or cards before phone numbers. Plain digit runs (ids, epoch timestamps),
dates, times and version numbers are left alone: a phone number needs a leading `+`,
a trunk `0` or the usual grouping. All patterns are compiled once, at import.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Final

__all__ = ["FINDING_KINDS", "MAX_PROMPT_CHARS", "redact", "redact_findings"]

_Replace = str | Callable[[re.Match[str]], str]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return "<CARD>"
    return match.group(0)


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return text
    return "<IPV6>"


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    return "<PHONE>" if 7 <= digits <= 15 else text


# Windows profile folders that name no person.
_SHARED_PROFILES: Final = frozenset({"public", "default", "default user", "all users", "shared"})


def _home(match: re.Match[str]) -> str:
    if match.group("name").lower() in _SHARED_PROFILES:
        return match.group(0)
    return match.group("prefix") + "<USER>"


def _looks_secret(value: str, min_length: int = 8) -> bool:
    """Machine-made rather than a word: digits among letters, or several capitals.

    Keeps "Bearer authentication", "Token verification" and `key=organization_name`.
    """
    if len(value) < min_length:
        return False
    digits = sum(ch.isdigit() for ch in value)
    upper = sum(ch.isupper() for ch in value)
    lower = sum(ch.islower() for ch in value)
    return (digits > 0 and upper + lower > 0) or (upper >= 2 and lower >= 2)


_PASSWORD_KEY = re.compile(r"(?:.*[_-])?(?:password|passwd|pwd|passphrase)", re.IGNORECASE)

_SECRET_KEYS = (
    r"[_-]*(?:[A-Za-z0-9]+[_-]+)*"  # prefixes such as aws_secret_access_, client_, x-api-
    r"(?:api[_-]?key|apikey|key|token|secret|password|passwd|pwd|passphrase|"
    r"credentials?|auth)"
)

# (pattern, replacement) in the order they run.
_RULES: Final[tuple[tuple[re.Pattern[str], _Replace], ...]] = (
    (
        re.compile(
            # The body may not run past another BEGIN: without that, every BEGIN left
            # without an END rescanned the rest of the text (quadratic time).
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[^-]|-(?!----BEGIN ))*?"
            r"-----END [A-Z0-9 ]*PRIVATE KEY-----",
            re.DOTALL,
        ),
        "<PRIVATE_KEY>",
    ),
    (
        # A token starts where a run of base64url starts: after `\b` alone, every `eyJ`
        # of an `eyJ-eyJ-...` run rescanned the rest of the run (quadratic time).
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
        "<JWT>",
    ),
    (re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"), "<AWS_KEY>"),
    (
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
        "<GITHUB_TOKEN>",
    ),
    (
        re.compile(
            r"\b(?:sk-[A-Za-z0-9_-]{20,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|AIza[0-9A-Za-z_-]{35})"
        ),
        "<API_KEY>",
    ),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "<SLACK_TOKEN>"),
    (
        re.compile(
            r"\b(?P<scheme>Bearer|Basic|Token)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE
        ),
        lambda m: f"{m.group('scheme')} <TOKEN>" if _looks_secret(m.group("value")) else m.group(0),
    ),
    (
        # The lookbehind starts a scheme only where a word starts: without it every
        # position of a long run of letters would rescan the run (quadratic time).
        re.compile(r"(?<![A-Za-z0-9+.-])(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"),
        lambda m: f"{m.group('head')}<USER>:<SECRET>@",
    ),
    (
        # key=value, key: value, "key": "value". Passwords may be short; other keys need
        # a long value so that `sort key=name` or `max_tokens=256` stay as they are.
        re.compile(
            # A key starts where a word starts (not after `_` or `-`): one attempt per
            # word, so a long `a_a_a_...` run is scanned once, not once per part.
            r"(?<![A-Za-z0-9_-])(?P<key>" + _SECRET_KEYS + r")(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
            r"(?P<value>[^\s\"'&,;]+)",
            re.IGNORECASE,
        ),
        lambda m: (
            f"{m.group('key')}{m.group('sep')}<SECRET>"
            if _PASSWORD_KEY.fullmatch(m.group("key")) or _looks_secret(m.group("value"), 12)
            else m.group(0)
        ),
    ),
    (
        re.compile(
            r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*"
            r"\.[A-Za-z]{2,}\b"
        ),
        "<EMAIL>",
    ),
    (
        re.compile(
            r"(?P<prefix>(?<![\w.-])(?:/var)?/home/|(?<![\w.-])/Users/"
            r"|\b[A-Za-z]:(?:\\\\|\\|/)Users(?:\\\\|\\|/))"
            # A name may contain spaces when a separator follows it ("John Smith\Documents");
            # otherwise it ends at whitespace.
            r"(?P<name>[^\\/\r\n:*?\"<>|]{1,64}?(?=[\\/])|[^\\/\s:*?\"<>|]{1,64})",
        ),
        _home,
    ),
    # Card numbers start with 2-6 (Mastercard, Amex/Diners, Visa, Mastercard, Discover);
    # this keeps epoch-millisecond timestamps (13 digits starting with 1) out.
    (re.compile(r"(?<![\w.+-])[2-6](?:[ -]?\d){12,18}(?![\w.-]?\d)"), _card),
    (
        re.compile(
            # Candidates with two colons or more, checked by `ipaddress`; times such as
            # 12:30:45 are candidates but not addresses.
            r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}"
            r"(?:\d{1,3}(?:\.\d{1,3}){3})?(?:%[A-Za-z0-9]+)?(?![\w:]|\.\d)"
        ),
        _ipv6,
    ),
    (
        re.compile(
            r"(?<![\w:-])[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2})(?:\1[0-9A-Fa-f]{2}){4}"
            r"(?![\w:-])"
        ),
        "<MAC>",
    ),
    (
        re.compile(
            r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
            r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
        ),
        "<IPV4>",
    ),
    (
        re.compile(
            r"(?<![\w.+/-])(?:"
            # International: +CC then groups, e.g. +44 20 7946 0958, +1 (415) 555-0100.
            r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,6}"
            # North American with grouping: (415) 555-0100, 415-555-0100, 415.555.0100.
            r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
            r"|\d{3}([.-])\d{3}\1\d{4}"
            r"|\d{3} \d{3} \d{4}"
            # National with a trunk 0: 020 7946 0958, 07700 900123, 030 12345678,
            # 0664-1234567; French 01 23 45 67 89. Dates (05-01-2024) have 2-digit groups.
            r"|0\d{1,4}(?:[ -]\d{3,8}){1,3}"
            r"|0\d(?:[ .]\d{2}){4}"
            r")(?![\w.-]?\d)"
        ),
        _phone,
    ),
)


# The kind of finding each rule makes, in `_RULES` order: the closed domain a content
# signal can count (`redact_findings`), never the findings themselves.
_RULE_KINDS: Final = (
    *("credential",) * 9,  # private key .. key=value secrets
    "email",
    "home_path",
    "card",
    *("network_address",) * 3,  # IPv6, MAC, IPv4
    "phone",
)
FINDING_KINDS: Final = ("email", "phone", "home_path", "credential", "card", "network_address")
"""Every kind `redact_findings` reports."""

# Substrings every match of a rule contains, in `_RULES` order: a rule none of whose
# needles is in the text is skipped (an `in` test runs at memchr speed, a pattern scan
# tries every position). Empty: always run. Case-insensitive rules have none (their
# case folding matches more than `str.lower` finds).
_DIGITS: Final = tuple("0123456789")
_RULE_NEEDLES: Final[tuple[tuple[str, ...], ...]] = (
    ("-----BEGIN ",),
    ("eyJ",),
    ("AKIA", "ASIA", "ABIA", "ACCA"),
    ("gh", "github_pat_"),
    ("sk-", "k_live_", "k_test_", "AIza"),
    ("xox",),
    (),  # Bearer/Basic/Token, case-insensitive
    ("://",),
    (":", "="),  # key=value: the separator
    ("@",),
    ("/home/", "Users"),
    tuple("23456"),  # cards start with 2 to 6
    (":",),  # IPv6
    (":", "-"),  # MAC
    (".",),  # IPv4
    _DIGITS,  # phone
)

if not len(_RULE_KINDS) == len(_RULE_NEEDLES) == len(_RULES):  # pragma: no cover
    raise AssertionError("every redaction rule needs a kind and its needles")


def _may_match(needles: tuple[str, ...], text: str) -> bool:
    return not needles or any(needle in text for needle in needles)


MAX_PROMPT_CHARS: Final = 65_536
"""The longest prompt `Telemetry.record_prompt` redacts. Every pattern runs in time
linear in the text (a few tens of milliseconds per 64 KiB on a laptop core); the cap
keeps the caller's thread from holding longer on a pasted document."""


def redact_findings(text: str) -> tuple[str, dict[str, int]]:
    """`redact(text)`, and how many findings of each kind (`FINDING_KINDS`) it replaced."""
    found: dict[str, int] = {}
    for (pattern, replace), kind, needles in zip(_RULES, _RULE_KINDS, _RULE_NEEDLES, strict=True):
        if not _may_match(needles, text):
            continue

        def substitute(match: re.Match[str], replace: _Replace = replace, kind: str = kind) -> str:
            out = replace if isinstance(replace, str) else replace(match)
            if out != match.group(0):
                found[kind] = found.get(kind, 0) + 1
            return out

        text = pattern.sub(substitute, text)
    return text, found


def redact(text: str) -> str:
    """`text` with personal data replaced by typed placeholders (see the module docstring)."""
    for (pattern, replace), needles in zip(_RULES, _RULE_NEEDLES, strict=True):
        if _may_match(needles, text):
            text = pattern.sub(replace, text)
    return text
