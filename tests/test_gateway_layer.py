"""The gateway layer (talking to Alipay) stands on its own: none of its modules loads a layer above it,
and the clients take an ``Alipay`` by its structure (``config``, ``protocol``, and for the async client
``executor``, read at every call), not by its class.

Each module is imported in a fresh interpreter. The package ``__init__`` is replaced by an empty package
object first, so what is checked is what the gateway modules themselves load, whatever ``__init__``
imports for the top-level names.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import alipay_middleware.gateway
from alipay_middleware import Alipay, AlipayClient, AsyncAlipayClient, LegacyClient, LegacyConfig, OpenApiConfig
from conftest import MD5_KEY, PARTNER, Keys, make_config

GATEWAY = Path(alipay_middleware.gateway.__file__).parent
MODULES = sorted(p.stem for p in GATEWAY.glob("*.py") if p.stem != "__init__")
#: The layers above the gateway: the composition root, the fronts and the callback core.
ABOVE = ("alipay_middleware.alipay", "alipay_middleware.fronts", "alipay_middleware.callbacks")
#: The two clients are siblings: neither loads the other.
SIBLINGS = {"client": "alipay_middleware.gateway.legacy_client", "legacy_client": "alipay_middleware.gateway.client"}

LOAD = """
import importlib, importlib.util, json, sys, types
spec = importlib.util.find_spec("alipay_middleware")  # finds the package without running its __init__
package = types.ModuleType("alipay_middleware")
package.__path__ = list(spec.submodule_search_locations)
package.__spec__ = spec
sys.modules["alipay_middleware"] = package
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("alipay_middleware."))))
"""


def loaded_by(module: str) -> list[str]:
    run = subprocess.run([sys.executable, "-c", LOAD, module], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded: list[str] = json.loads(run.stdout)
    return loaded


def test_every_gateway_module_is_checked():
    assert {"aio", "base", "client", "fields", "legacy_client", "results", "transport"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_gateway_module_loads_no_layer_above(name: str):
    module = f"alipay_middleware.gateway.{name}"
    loaded = loaded_by(module)
    assert module in loaded
    above = [m for m in loaded if any(m == layer or m.startswith(layer + ".") for layer in ABOVE)]
    assert above == []
    if name in SIBLINGS:
        assert SIBLINGS[name] not in loaded


#: What opens connections. Only the transport may; the simulator (a stand-in for Alipay) is a tool of its own.
NETWORK = ("http.client", "urllib.request", "ssl", "http.server", "httpx", "requests", "aiohttp")


def test_only_the_transport_talks_to_alipay():
    package = GATEWAY.parent
    found = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package).as_posix()
        if where == "gateway/transport.py" or where.startswith("simulator/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{where}: {n}" for n in names if any(n == m or n.startswith(m + ".") for m in NETWORK)]
    assert found == []


# -- an Alipay by structure ----------------------------------------------------------------------------------


class Shop:
    """Not an ``Alipay``, but shaped like one for the gateway: a config, its protocol, and a pool that the
    test swaps (as ``Alipay.close()`` does) and counts the reads of."""

    def __init__(self, config: OpenApiConfig | LegacyConfig, name: str) -> None:
        self.config = config
        self.protocol = config.protocol()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.reads = 0

    @property
    def executor(self) -> ThreadPoolExecutor:
        self.reads += 1
        return self.pool


def record_threads(aclient: AsyncAlipayClient) -> list[str]:
    """Make ``aclient.query`` record the name of the thread its synchronous call runs in."""
    names: list[str] = []
    aclient.sync.query = lambda **_: names.append(threading.current_thread().name)  # type: ignore[method-assign]
    return names


def test_clients_take_anything_shaped_like_an_alipay(keys: Keys):
    shop = Shop(make_config(keys), "shop")
    legacy = Shop(LegacyConfig(partner=PARTNER, key=MD5_KEY), "legacy")
    try:
        client = AlipayClient(shop)
        assert client.config is shop.config and client.protocol is shop.protocol
        legacy_client = LegacyClient(legacy)
        assert legacy_client.config is legacy.config and legacy_client.protocol is legacy.protocol
        assert isinstance(AsyncAlipayClient(shop).sync, AlipayClient)
        assert isinstance(AsyncAlipayClient(legacy).sync, LegacyClient)
        assert shop.reads == legacy.reads == 0  # the pool is not asked for until a call
        with pytest.raises(TypeError, match="LegacyConfig.*LegacyClient"):
            AlipayClient(legacy)
        with pytest.raises(TypeError, match="OpenApiConfig.*AlipayClient"):
            LegacyClient(shop)
    finally:
        shop.pool.shutdown()
        legacy.pool.shutdown()


def test_async_calls_run_in_the_pool_the_host_has_at_each_call(keys: Keys):
    shop = Shop(make_config(keys), "first")
    aclient = AsyncAlipayClient(shop)
    names = record_threads(aclient)
    try:
        asyncio.run(aclient.query(out_trade_no="S1"))
        shop.pool.shutdown()
        shop.pool = ThreadPoolExecutor(1, thread_name_prefix="second")  # as Alipay.close() and the next use do
        asyncio.run(aclient.query(out_trade_no="S1"))
        assert [name.split("_")[0] for name in names] == ["first", "second"] and shop.reads == 2
        with ThreadPoolExecutor(1, thread_name_prefix="own") as own:
            mine = AsyncAlipayClient(shop, executor=own)
            mine_names = record_threads(mine)
            asyncio.run(mine.query(out_trade_no="S1"))
        assert [name.split("_")[0] for name in mine_names] == ["own"]
        assert shop.reads == 2  # an executor given to the client wins; the host's is not asked for
    finally:
        shop.pool.shutdown()


def test_alipay_aclient_runs_in_the_alipay_pool_and_a_new_one_after_close(keys: Keys):
    alipay = Alipay(make_config(keys), ledger=":memory:")
    try:
        names = record_threads(alipay.aclient)
        asyncio.run(alipay.aclient.query(out_trade_no="S1"))
        pool = alipay.executor
        alipay.close()
        asyncio.run(alipay.aclient.query(out_trade_no="S1"))
        assert [name.split("_")[0] for name in names] == ["alipay", "alipay"]
        assert alipay.executor is not pool
    finally:
        alipay.close()
