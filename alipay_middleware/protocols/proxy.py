"""The ``proxy=`` setting of both configs, checked once: host, port and the ``Proxy-Authorization`` value.

Checked where a config is made and used by the transport (:mod:`alipay_middleware.gateway.transport`, which
says how calls go through the proxy). The credentials never appear in an error message, a ``str`` or a
``repr``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

_PROXY_FORM = "http://[user:password@]host:port, e.g. http://proxy.internal:3128"
_HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")


@dataclass(frozen=True)
class Proxy:
    """A validated ``proxy`` setting. ``str()`` and ``repr()`` show ``***`` for the credentials."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # the Proxy-Authorization header's value
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)  # scrubbed from error texts

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'***@' if self.authorization else ''}{host}:{self.port}"

    def scrub(self, text: str) -> str:
        """``text`` with every form of the credentials replaced by ``***`` (defence in depth)."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def parse_proxy(value: object, setting: str = "proxy") -> Proxy | None:
    """Check a ``proxy`` setting: None, or ``http://[user:password@]host:port``.

    The messages say what is wrong and never echo the value, which may hold a password.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{setting} must be a URL string ({_PROXY_FORM}) or None, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{setting} is empty: give None for no proxy, or {_PROXY_FORM}")
    if not all("\x21" <= c <= "\x7e" for c in value):
        raise ValueError(f"{setting} must be printable ASCII without spaces ({_PROXY_FORM}); percent-encode "
                         "special characters in the user name or password")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ValueError(f"{setting}: https:// proxies (TLS to the proxy itself) are not supported; use "
                         f"{_PROXY_FORM}. Calls to Alipay stay TLS end to end inside the CONNECT tunnel")
    if scheme.startswith("socks"):
        raise ValueError(f"{setting}: SOCKS proxies are not supported; use an HTTP proxy ({_PROXY_FORM})")
    if scheme != "http" or not parts.netloc:
        raise ValueError(f"{setting} must be an HTTP proxy URL: {_PROXY_FORM}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{setting} must be only scheme, credentials, host and port ({_PROXY_FORM}), "
                         "without a path, query or fragment")
    host = parts.hostname
    if not host or not _HOST.fullmatch(host):
        raise ValueError(f"{setting} has no valid host ({_PROXY_FORM})")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None:
        raise ValueError(f"{setting} must name the proxy's port ({_PROXY_FORM})")
    if not 0 < port < 65536:
        raise ValueError(f"{setting}'s port must be a number between 1 and 65535 ({_PROXY_FORM})")
    if parts.username is None:
        return Proxy(host, port)
    user, password = unquote(parts.username), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    secrets = {s for s in (parts.password or "", password, quote(password, safe=""), token) if s}
    return Proxy(host, port, f"Basic {token}", tuple(sorted(secrets, key=len, reverse=True)))
