"""Calls from the shop to Alipay's gateway, on the standard library.

The only one so far is the legacy service's ``notify_verify`` origin check. The callback flow never
calls this itself: it yields the call to its driver (see ``flow.py``), which runs it in the request's
thread (WSGI) or in the ``Alipay`` instance's thread pool (ASGI), never on the event loop.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

from .errors import GatewayUnavailable

USER_AGENT = "alipay-middleware"


def http_get(url: str, timeout: float, limit: int = 4096) -> bytes:
    """GET ``url`` and return at most ``limit`` bytes of a 200 body.

    Raises :class:`GatewayUnavailable` for anything that is not a complete 200 answer: refused or
    reset connections, DNS failures, timeouts, HTTP error statuses and bodies over ``limit``.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "text/plain, */*"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                raise GatewayUnavailable(f"gateway answered HTTP {response.status}")
            body: bytes = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the open response
        raise GatewayUnavailable(f"gateway answered HTTP {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # timeouts are OSError too
        reason = getattr(exc, "reason", None) or exc
        raise GatewayUnavailable(f"gateway unreachable: {type(reason).__name__}: {reason}") from None
    if len(body) > limit:
        raise GatewayUnavailable(f"gateway answer longer than {limit} bytes")
    return body
