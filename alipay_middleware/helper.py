"""The per-request helper behind ``environ["alipay"]`` / ``scope["alipay"]``.

It is created for every request, so it only remembers where the request came from; the callback URLs
are worked out when a pay URL is actually built: the configured URLs if any, else the request's own
scheme, host and mount point plus the middleware's paths. Behind a proxy, use werkzeug's ProxyFix (or
uvicorn's ``--proxy-headers``) or configure explicit URLs: a Host header is only as trustworthy as the
proxy in front of the app.

The customer's address (the legacy service's ``exter_invoke_ip``) is the connection's peer, or, with
``Alipay(trusted_proxies=N)``, the address N hops from the right of ``X-Forwarded-For``, counted the
way werkzeug's ProxyFix counts: entries further left were written by whoever sent the request and can
say anything.
"""

from __future__ import annotations

import html
import ipaddress
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .core import Alipay


def check_callback_url(url: str, setting: str) -> str:
    """notify_url / return_url must be absolute http(s) URLs without a query (Alipay's rule)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{setting} must be an absolute http(s) URL, got {url[:80]!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{setting} must not carry a query string or fragment (Alipay refuses them): {url[:80]!r}")
    return url


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: int) -> str | None:
    """The customer's IP address, trusting exactly ``trusted_proxies`` hops of ``X-Forwarded-For``.

    None when there is no usable address (a Unix socket, a header too short for the proxy count and
    no peer, something that is not an IP address).
    """
    candidate = peer
    if trusted_proxies and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        if len(hops) >= trusted_proxies:
            candidate = hops[-trusted_proxies]
    if not candidate:
        return None
    try:
        return normalize_ip(candidate)
    except ValueError:
        return None


def normalize_ip(text: str) -> str:
    """An IP address in its canonical form; a dual-stack server's ``::ffff:1.2.3.4`` is ``1.2.3.4``."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def no_client(request: object) -> tuple[str | None, str | None]:
    return None, None


def render_form(action: str, params: Mapping[str, str], form_id: str = "alipay-pay-form",
                charset: str = "utf-8") -> str:
    """An auto-submitting POST form. Every value is HTML-escaped with quotes (``&amp;`` survives)."""
    inputs = "\n".join(
        f'  <input type="hidden" name="{html.escape(k, quote=True)}" value="{html.escape(v, quote=True)}">'
        for k, v in params.items()
    )
    return (
        f'<form id="{form_id}" action="{html.escape(action, quote=True)}" method="POST" '
        f'accept-charset="{charset}">\n'
        f"{inputs}\n"
        '  <noscript><button type="submit">Continue to Alipay</button></noscript>\n'
        "</form>\n"
        f'<script>document.getElementById("{form_id}").submit();</script>\n'
    )


class RequestHelper:
    """Base of the protocol helpers: knows the request's origin, resolves callback URLs."""

    __slots__ = ("_alipay", "_request", "_origin_of", "_client_of")

    def __init__(self, alipay: Alipay, request: Any, origin_of: Callable[[Any], str],
                 client_of: Callable[[Any], tuple[str | None, str | None]] = no_client) -> None:
        self._alipay = alipay
        self._request = request
        self._origin_of = origin_of
        self._client_of = client_of

    def client_address(self) -> str | None:
        """The customer's IP address (see ``Alipay(trusted_proxies=...)``), or None outside a request."""
        peer, forwarded_for = self._client_of(self._request)
        return client_address(peer, forwarded_for, self._alipay.trusted_proxies)

    def callback_urls(self, notify_url: str | None = None, return_url: str | None = None) -> tuple[str, str]:
        """The notify and return URLs a pay request built now would carry."""
        config = self._alipay.config
        notify = notify_url or config.notify_url
        ret = return_url or config.return_url
        if notify is None or ret is None:
            base = self._origin_of(self._request)
            notify = notify or base + self._alipay.notify_path
            ret = ret or base + self._alipay.return_path
        return check_callback_url(notify, "notify_url"), check_callback_url(ret, "return_url")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self._alipay!r}>"
