"""Keep secrets and identifying free text out of log lines and error messages.

* :func:`redact_secrets`: credentials in URLs (``scheme://user:password@host`` -> ``scheme://user:***@host``);
* :func:`scrub`: that, plus every quoted value (``'...'`` or ``"..."``) that is not a number or UID
  replaced by ``'<redacted>'``. Third-party messages (pydicom warnings and parser errors, decoder
  errors) quote header values, and a hostile or merely malformed header can put a patient's name
  into any of them; our own reasons never quote free text (``routing_policy``), so nothing useful is lost.

The log formatters (``logging_setup``) apply :func:`scrub` to every message, exception text and
string field; ``cxr-node serve`` applies it to settings errors before printing them.
"""

from __future__ import annotations

import re

_URL_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@'\"/]*@")
_QUOTED = re.compile(r"'(?P<s>[^'\n]{0,4096})'|\"(?P<d>[^\"\n]{0,4096})\"")
_SAFE_QUOTED = re.compile(r"^[0-9.+\-eE]*$")
REDACTED = "<redacted>"


def redact_secrets(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _URL_CREDENTIALS.sub(lambda m: m.group("head") + "***@", text)


def _quoted(m: re.Match[str]) -> str:
    inner = m.group("s") if m.group("s") is not None else m.group("d")
    if _SAFE_QUOTED.match(inner):
        return m.group(0)
    q = "'" if m.group("s") is not None else '"'
    return f"{q}{REDACTED}{q}"


def scrub(text: str) -> str:
    """``text`` without URL credentials and without quoted values other than numbers and UIDs."""
    return _QUOTED.sub(_quoted, redact_secrets(text))
