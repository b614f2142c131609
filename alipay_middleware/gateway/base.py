"""What every gateway client shares: its settings, the transport, the retry loop and the log line."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from ..errors import AlipayApiError, GatewayUnavailable, OutcomeUnknown, ResponseError
from .transport import Transport, TransportError

__all__ = ["Call", "GatewayClient", "Host", "config_and_protocol", "config_of"]

log = logging.getLogger("alipay_middleware.client")


class Call:
    """What the log line of one public call says; filled in as the call goes."""

    def __init__(self) -> None:
        self.outcome = "error"
        self.attempts = 0


class Host(Protocol):
    """What a client takes from an :class:`~alipay_middleware.Alipay`: its configuration and the protocol
    made from it. Read by structure, so that this layer never imports the composition root."""

    @property
    def config(self) -> object: ...

    @property
    def protocol(self) -> object: ...


def config_of(source: object) -> object:
    """The configuration: a :class:`Host`'s ``config``, or ``source`` itself (a bare config has no ``config``)."""
    config = getattr(source, "config", None)
    return source if config is None else config


def config_and_protocol(source: object) -> tuple[object, object]:
    """The configuration and its protocol, from a :class:`Host` or a bare config (checked by the caller)."""
    config = config_of(source)
    if config is not source:
        return config, getattr(source, "protocol", None)
    factory = getattr(source, "protocol", None)
    return source, factory() if callable(factory) else None


class GatewayClient:
    """Settings, the transport (one HTTP exchange within ``timeout``, through the config's ``proxy``), the
    retry loop and the log line, shared by :class:`~alipay_middleware.gateway.client.AlipayClient` and the
    legacy service's :class:`~alipay_middleware.gateway.legacy_client.LegacyClient`. ``host``: the gateway's
    host name; ``account``: the merchant (app id or partner id), both for reprs and logs."""

    timeout: float
    retries: int
    backoff: float
    max_response: int
    host: str

    def _setup(self, gateway: str, timeout: float, retries: int, backoff: float, max_response: int,
               proxy: str | None) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise ValueError(f"timeout must be a number of seconds in (0, 600], got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ValueError(f"retries must be an int between 0 and 10, got {retries!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff <= 60 \
                or not math.isfinite(backoff):
            raise ValueError(f"backoff must be a number of seconds between 0 and 60, got {backoff!r}")
        if isinstance(max_response, bool) or not isinstance(max_response, int) \
                or not 1024 <= max_response <= 16 * 2**20:
            raise ValueError(f"max_response must be an int between 1024 and 16 MiB, got {max_response!r}")
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_response = max_response
        self._transport = Transport(gateway, timeout=self.timeout, max_response=max_response, proxy=proxy)
        self.host = self._transport.host

    @property
    def account(self) -> str:
        """The merchant identity (app id or partner id)."""
        raise NotImplementedError  # pragma: no cover

    @contextmanager
    def _logged(self, method: str, out_trade_no: str | None, trade_no: str | None) -> Iterator[Call]:
        call = Call()
        try:
            yield call
        except AlipayApiError as exc:
            call.outcome = f"{exc.code}/{exc.sub_code}" if exc.sub_code else exc.code
            if not exc.verified:
                call.outcome += "/unsigned"
            raise
        except OutcomeUnknown as exc:
            call.outcome = f"unknown/{exc.reason}" + (f"/{exc.code}" if exc.code else "")
            raise
        except GatewayUnavailable:
            call.outcome = "unavailable"
            raise
        except ResponseError as exc:
            call.outcome = exc.reason
            raise
        finally:
            who = f"out_trade_no={out_trade_no}" if out_trade_no is not None else f"trade_no={trade_no}"
            log.info("alipay call method=%s %s outcome=%s attempts=%d", method, who, call.outcome, call.attempts)

    def _attempts(
        self,
        method: str,
        attempt: Callable[[], bytes],
        *,
        idempotent: bool,
        call: Call,
        unknown: Callable[[str, str], OutcomeUnknown] | None = None,
    ) -> bytes:
        """``attempt()`` (build, sign and send one request; a fresh one each time), retried on network
        trouble only when ``idempotent``: the raw answer, or :class:`GatewayUnavailable`."""
        attempts = 1 + self.retries if idempotent else 1
        sent_any = False
        for number in range(1, attempts + 1):
            call.attempts = number
            try:
                return attempt()
            except TransportError as exc:
                if exc.sent and unknown is not None:
                    raise unknown(exc.reason, exc.detail) from None
                sent_any = sent_any or exc.sent
                if not exc.retryable or number == attempts:
                    tries = f" after {number} attempts" if number > 1 else ""
                    sent = "" if sent_any else " (nothing was sent)"
                    raise GatewayUnavailable(f"{method}: {exc.reason}{tries}{sent}: {exc.detail}") from None
                log.warning("alipay call retrying method=%s attempt=%d reason=%s", method, number, exc.reason)
                if self.backoff:
                    time.sleep(self.backoff * 2 ** (number - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, verb: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        """One request within ``timeout``: the 200 answer's body, or a :class:`TransportError`."""
        return self._transport.request(verb, target, body, headers)
