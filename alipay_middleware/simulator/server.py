"""The simulator on a threaded werkzeug server in a daemon thread."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from .app import Simulator


class SimServer:
    """A running simulator: ``url``, ``gateway_url``; ``close()`` stops the server and the notifier."""

    def __init__(self, simulator: Simulator, host: str, port: int) -> None:
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

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self.simulator.close()
