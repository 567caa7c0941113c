"""Hiding secrets in text before it is stored: command lines, URLs, error messages.

Everything the store writes as free text (a run's command line, base URL and error, a query's
parameters and error, an event's detail, a mark's detail) goes through :func:`scrub` first, so that
no password or token reaches the database, in any form. Scrubbing errs on the side of hiding: a
value after an option named like a secret is hidden even when it was not one.

>>> scrub("analysis.py --db postgresql://me:s3cret@host/db --token abc")
'analysis.py --db postgresql://me:***@host/db --token ***'
>>> scrub('GET https://alyx.org/x?token=abc&page=2 Authorization: Bearer eyJhbGci')
'GET https://alyx.org/x?token=***&page=2 Authorization: Bearer ***'
>>> scrub_argv(["fit.py", "--password", "correct horse", "--api-key=k1", "-p", "x"])
"fit.py --password '***' '--api-key=***' -p '***'"
"""
from __future__ import annotations

import re
import shlex
from typing import Any

HIDDEN = "***"

# Names of options, parameters and JSON keys that hold secrets (matched whole, any case, '-' or '_').
_NAMES = (r"pass(?:word|wd|phrase)?|pwd|p|token|access[-_]?token|refresh[-_]?token|id[-_]?token|secret|"
          r"client[-_]?secret|api[-_]?key|apikey|auth|authorization|credentials?|private[-_]?key")
_QUOTED = r'\\\'(?:(?!\\\').)*\\\'|\\"(?:(?!\\").)*\\"|"(?:[^"\\]|\\.)*"|\'[^\']*\''
_SCHEMES = r"(?:bearer|basic|token|digest)\s+"   # 'Authorization: Bearer <token>': the scheme is kept

_PATTERNS = [
    # scheme://user:PASSWORD@host (a password may hold '@': up to the last '@' before the host)
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*@(?=[^@\s/]*(?:[/?#\s]|$))"), r"\1" + HIDDEN + "@"),
    # "password": "..." (JSON, Python reprs)
    (re.compile(rf"""(?i)(\\?["'](?:{_NAMES})\\?["']\s*:\s*)(?:{_QUOTED}|[^,}}\s]+)"""), r'\1"' + HIDDEN + '"'),
    # --password VALUE, --password=VALUE, -p VALUE, --auth "Bearer x", --auth Bearer x
    (re.compile(rf"(?i)(?<![\w-])(--?(?:{_NAMES}))(=|\s+)(?:{_SCHEMES})?(?:{_QUOTED}|[^\s\"']+)"), r"\1\2" + HIDDEN),
    # Authorization: Bearer TOKEN (an HTTP header in an error message)
    (re.compile(rf"(?i)(\bauthorization\s*:\s*(?:{_SCHEMES})?)[^\s\"']+"), r"\1" + HIDDEN),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1" + HIDDEN),
    # password=VALUE, token=VALUE in URLs' queries, connection strings, key=value text
    (re.compile(rf"(?i)(?<![\w-])((?:{_NAMES})=)(?:{_QUOTED}|[^&\s;,\"']+)"), r"\1" + HIDDEN),
]
_OPTION = re.compile(rf"(?i)--?(?:{_NAMES})")
_KEY = re.compile(rf"(?i)(?:{_NAMES})")


def scrub(text: str) -> str:
    """``text`` with every password, token and key it holds replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_argv(argv: list[str]) -> str:
    """A command line (``sys.argv``) as one shell-quoted string, secrets hidden: the value after an
    option named like a secret is hidden whole, even a quoted multi-word one."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(HIDDEN)
            hide_next = arg.lower() in ("bearer", "basic", "token", "digest")   # '--auth Bearer x'
            continue
        hide_next = _OPTION.fullmatch(arg) is not None
        out.append(scrub(arg))
    return shlex.join(out)


def scrub_params(value: Any) -> Any:
    """Parameters (dicts, lists, text) with secrets hidden: the value of a key named like a secret
    whole, and any secret inside other text (before they are stored as JSON)."""
    if isinstance(value, dict):
        return {k: HIDDEN if isinstance(k, str) and _KEY.fullmatch(k) and v is not None else scrub_params(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_params(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value
