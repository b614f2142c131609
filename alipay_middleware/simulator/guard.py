"""What the simulator refuses before routing: a Host that is not this machine, a cross-origin POST to its pages.

The simulator pays whatever it is asked to pay and switches faults for whoever asks, so two browser
attacks matter even though it listens on loopback only:

- DNS rebinding: a page on ``attacker.example`` re-resolves its own name to 127.0.0.1 and then drives
  (and reads) the simulator as if same-origin. The browser still sends the name it resolved in Host, so
  a Host that is not a loopback name (``localhost``, 127.0.0.0/8, ``[::1]``, any port) or the address the
  server is bound to is refused with 421; a malformed Host with 400.
- Cross-site request forgery: any page can submit a form to ``/faults`` or ``/checkout/<trade_no>``
  (trade numbers are guessable). Browsers send Origin on every POST (Fetch standard), so a POST to the
  simulator's own pages is refused with 403 when its Origin is another origin (``null`` included) or,
  without an Origin, its Referer is. A POST with neither comes from a program, not from a page (the
  project's tests, ``examples/demo.py --check``), and is let through: a program that can reach the
  loopback port needs no browser to do anything it likes.

``gateway.do`` is cross-origin by design (the shop's page submits the pay form to it from the shop's
origin, which only opens a checkout; servers call the APIs without an Origin) and is not origin-checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

#: ``host[:port]``: a DNS name or IPv4 address, or an IPv6 address in brackets; ASCII digits only in the port.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SHOWN = 100  # characters of a refused header quoted back


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a well-formed Host header value (host lowercased), else None."""
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    host, port = match.group(1).lower(), match.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    if port is None:
        return host, None
    number = int(port)
    return (host, number) if 0 < number <= 65535 else None


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``[::1]``: names only this machine answers to."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return address.is_loopback


def host_refusal(environ: Mapping[str, Any], bound: Collection[tuple[str, int]]) -> tuple[int, str] | None:
    """(status, reason) when the request's Host is not this machine or the bound ``(host, port)``."""
    value = environ.get("HTTP_HOST")
    if value is None:
        # HTTP/1.0 without Host: a program, not a browser (browsers always send the name they resolved).
        return None
    parsed = split_host(value)
    if parsed is None:
        return 400, (f"Bad Request: the Host header {_quote(value)} is not a well-formed host[:port].")
    host, port = parsed
    if is_loopback_host(host) or (host, port) in bound:
        return None
    return 421, (f"Misdirected Request: this Alipay simulator answers only to localhost, 127.0.0.1, [::1] or "
                 f"the address it is bound to, not to Host {_quote(value)} (a guard against DNS rebinding). "
                 "Use the URL it printed.")


def own_origin(environ: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """The origin the request was addressed to: its scheme and (already checked) Host."""
    scheme = str(environ.get("wsgi.url_scheme", "http")).lower()
    value = environ.get("HTTP_HOST")
    if value is None:
        value = f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return _origin(scheme, str(value))


def parse_origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an Origin or Referer header, None for ``null`` or anything malformed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return _origin(parts.scheme.lower(), parts.netloc)


def cross_origin_refusal(environ: Mapping[str, Any]) -> str | None:
    """Why a state-changing request to the simulator's own pages is refused, or None when it may go on."""
    own = own_origin(environ)
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None:
        if own is not None and parse_origin(origin) == own:
            return None
        return (f"Forbidden: this form belongs to the Alipay simulator's own pages and was sent from another "
                f"origin (Origin {_quote(origin)}). Use the simulator's page itself.")
    referer = environ.get("HTTP_REFERER")
    if referer and (own is None or parse_origin(referer) != own):
        return (f"Forbidden: this form belongs to the Alipay simulator's own pages and was sent from another "
                f"page (Referer {_quote(referer)}). Use the simulator's page itself.")
    return None


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    if scheme not in _DEFAULT_PORTS:
        return None
    parsed = split_host(netloc)
    if parsed is None:
        return None
    host, port = parsed
    return scheme, host, _DEFAULT_PORTS[scheme] if port is None else port


def _quote(value: str) -> str:
    shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "..."
    return ascii(shown)
