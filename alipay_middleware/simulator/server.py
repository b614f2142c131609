"""The simulator on a threaded werkzeug server in a daemon thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from werkzeug.serving import BaseWSGIServer, make_server


class Served(Protocol):
    """What the server runs: a WSGI app that can be closed (the :class:`~.app.Simulator`)."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Served)


class SimServer(Generic[S]):
    """A running simulator: ``url``, ``gateway_url``; ``close()`` stops the server and the notifier."""

    def __init__(self, simulator: S, host: str, port: int) -> None:
        self.simulator = simulator
        self._server: BaseWSGIServer = make_server(host, port, simulator, threaded=True)
        bound = self._server.server_address
        address = bound[0].decode() if isinstance(bound[0], bytes) else str(bound[0])
        shown = f"[{address}]" if ":" in address else address
        self.url = f"http://{shown}:{bound[1]}"
        self.gateway_url = self.url + "/gateway.do"
        # A short poll interval: shutdown() waits for the loop to notice, and tests close servers often.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="simulator-server",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<SimServer {self.url}>"

    def __enter__(self) -> SimServer[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self.simulator.close()
