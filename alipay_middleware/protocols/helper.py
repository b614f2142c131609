"""The per-request helper behind ``environ["alipay"]`` / ``scope["alipay"]``.

It is created for every request, so it only remembers where the request came from; the callback URLs
are worked out when a pay URL is actually built, each on its own: a per-call ``notify_url=``/``return_url=``,
else the configured one, else one derived from the request's scheme, Host and mount point plus the
middleware's path. The Host header is whatever the sender wrote, so a URL is derived from it only when it
is a well-formed ``host[:port]`` naming loopback (``localhost``, 127.0.0.0/8, ``[::1]``) or a host listed
in ``Alipay(allowed_hosts=...)``; otherwise :class:`~alipay_middleware.errors.UntrustedHost` is raised
and nothing is signed. ``alipay.helper(origin)`` gives an origin the caller vouches for: no Host is read.

The customer's address (the legacy service's ``exter_invoke_ip``) is the connection's peer, or, with
``Alipay(trusted_proxies=N)``, the address N hops from the right of ``X-Forwarded-For``, counted the
way werkzeug's ProxyFix counts: entries further left were written by whoever sent the request and can
say anything.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from ..errors import UntrustedHost

if TYPE_CHECKING:
    from .base import Protocol as AlipayProtocol


class RequestOrigin(NamedTuple):
    """What a request says about where it was sent: the server's scheme, the Host header as received
    (None when there is none) and the mount point (``SCRIPT_NAME`` / ``root_path``). The host is not
    trusted until :func:`request_base` has checked it."""

    scheme: str
    host: str | None
    root_path: str


#: A DNS label (case-folded first): letters, digits and inner hyphens, at most 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_ALLOWED_HOST_FORM = ("host names such as 'shop.example', '.shop.example' (that name and every name under it) "
                      "or IP addresses, without scheme, port or path")


def _canonical_name(text: str) -> str | None:
    """A DNS name or dotted-quad IPv4 address in canonical form (lower case, no trailing dot), else None."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if labels[-1].isdigit():  # no top-level domain is numeric: this has to be an IPv4 address
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            return None
    return name


def _canonical_ipv6(text: str) -> str | None:
    """``[2001:db8::1]`` (brackets optional) in compressed, bracketed form; zone ids are refused."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in inner:
        return None
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        return None


def split_host(text: str) -> tuple[str, int | None] | None:
    """A Host header's ``host[:port]`` as (canonical host, port or None), or None if it is not well-formed:
    a DNS name or IPv4 address, or a bracketed IPv6 address, and an optional port 1-65535."""
    if not text.isascii() or len(text) > 260:
        return None
    text = text.lower()
    if text.startswith("["):
        end = text.find("]") + 1
        host, rest = (_canonical_ipv6(text[:end]) if end else None), text[end:]
    else:
        name, colon, port_text = text.partition(":")
        host, rest = _canonical_name(name), colon + port_text
    if host is None:
        return None
    if not rest:
        return host, None
    if rest[0] != ":" or not _PORT.fullmatch(rest[1:]) or not 1 <= int(rest[1:]) <= 65535:
        return None
    return host, int(rest[1:])


def check_allowed_hosts(allowed_hosts: Any) -> tuple[str, ...] | None:
    """``Alipay(allowed_hosts=...)`` in canonical form: a list or tuple of host names (case-insensitive),
    a leading dot meaning the name and every name under it, as Django's ``ALLOWED_HOSTS`` does."""
    if allowed_hosts is None:
        return None
    if not isinstance(allowed_hosts, (list, tuple)):
        raise TypeError(f"allowed_hosts must be a list or tuple of {_ALLOWED_HOST_FORM}, "
                        f"not {type(allowed_hosts).__name__}")
    canonical: list[str] = []
    for entry in allowed_hosts:
        if not isinstance(entry, str):
            raise TypeError(f"allowed_hosts entries must be str, got {type(entry).__name__}")
        if entry == "*":
            raise ValueError("allowed_hosts=['*'] would trust any Host header; list the shop's host names, "
                             "or set notify_url and return_url in the config")
        wildcard = entry.startswith(".")
        text = entry[1:] if wildcard else entry
        host = None
        if text.isascii():
            text = text.lower()
            host = _canonical_ipv6(text) if ":" in text and not wildcard else _canonical_name(text)
            if wildcard and host is not None and host.rpartition(".")[2].isdigit():
                host = None  # ".10.0.0.1" is not a family of names
        if host is None:
            raise ValueError(f"allowed_hosts entries are {_ALLOWED_HOST_FORM}; got {entry[:80]!r}")
        canonical.append("." + host if wildcard else host)
    return tuple(dict.fromkeys(canonical))


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``[::1]``, for a host in :func:`split_host`'s canonical form."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    for entry in allowed_hosts:
        if host == entry or (entry.startswith(".") and (host == entry[1:] or host.endswith(entry))):
            return True
    return False


def request_base(origin: RequestOrigin, allowed_hosts: tuple[str, ...] | None, settings: tuple[str, ...]) -> str:
    """``scheme://host[:port]/mount`` from a request, if its Host may name the shop; else
    :class:`UntrustedHost` naming ``settings`` (the URLs this was needed for)."""
    if origin.host is None:
        raise UntrustedHost("missing_host", settings, None)
    parsed = split_host(origin.host)
    if parsed is None:
        raise UntrustedHost("malformed_host", settings, origin.host)
    host, port = parsed
    if not is_loopback(host) and not host_allowed(host, allowed_hosts or ()):
        raise UntrustedHost("host_not_allowed", settings, origin.host)
    default_port = {"http": 80, "https": 443}.get(origin.scheme)
    netloc = host if port is None or port == default_port else f"{host}:{port}"
    return f"{origin.scheme}://{netloc}{origin.root_path}"


def check_base_url(base_url: str) -> str:
    """``alipay.helper(base_url)``'s origin, vouched for by the caller: an absolute http(s) URL."""
    if not isinstance(base_url, str):
        raise TypeError(f"base_url must be a str such as 'https://shop.example', not {type(base_url).__name__}")
    parts = urlsplit(base_url)
    if (parts.scheme not in ("http", "https") or not parts.netloc or "?" in base_url or "#" in base_url
            or not base_url.isprintable() or " " in base_url):
        raise ValueError("base_url must be an absolute http(s) URL without query or fragment, such as "
                         f"'https://shop.example' or 'https://shop.example/shop', got {base_url[:80]!r}")
    return base_url.rstrip("/")


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


class CallbackUrls(Protocol):
    """The configured callback URLs (``OpenApiConfig`` and ``LegacyConfig`` both have them)."""

    @property
    def notify_url(self) -> str | None: ...
    @property
    def return_url(self) -> str | None: ...


class HelperSettings(Protocol):
    """What a pay helper reads of the ``Alipay`` instance that made it (``Alipay`` is one)."""

    @property
    def config(self) -> CallbackUrls: ...
    @property
    def protocol(self) -> AlipayProtocol: ...
    @property
    def notify_path(self) -> str: ...
    @property
    def return_path(self) -> str: ...
    @property
    def allowed_hosts(self) -> tuple[str, ...] | None: ...
    @property
    def trusted_proxies(self) -> int: ...


class RequestHelper:
    """Base of the protocol helpers: knows the request's origin, resolves callback URLs."""

    __slots__ = ("_alipay", "_request", "_origin_of", "_client_of")

    def __init__(self, alipay: HelperSettings, request: Any, origin_of: Callable[[Any], RequestOrigin | str],
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
        """The notify and return URLs a pay request built now would carry.

        Each is the per-call one, else the configured one, else derived from the request's origin: an
        explicit origin (``alipay.helper(origin)``) as given, the request's Host only if trusted (raises
        :class:`UntrustedHost` otherwise). A URL that is given never looks at the Host.
        """
        config = self._alipay.config
        notify = notify_url or config.notify_url
        ret = return_url or config.return_url
        if notify is None or ret is None:
            origin = self._origin_of(self._request)
            if isinstance(origin, str):
                base = origin
            else:
                needed = tuple(name for name, url in (("notify_url", notify), ("return_url", ret)) if url is None)
                base = request_base(origin, self._alipay.allowed_hosts, needed)
            notify = notify or base + self._alipay.notify_path
            ret = ret or base + self._alipay.return_path
        return check_callback_url(notify, "notify_url"), check_callback_url(ret, "return_url")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self._alipay!r}>"
