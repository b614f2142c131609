"""What the example shops share, whatever the web framework: the catalogue, the orders table, settings.

Settings come from the environment:

    ALIPAY_APP_ID           the 16-digit app id (unset: demo mode, see below)
    ALIPAY_APP_PRIVATE_KEY  the app's private key text (PEM, or the bare base64 line from the key tool)
    ALIPAY_PUBLIC_KEY       *Alipay's* public key as shown in the Open Platform console
    ALIPAY_GATEWAY          default: the sandbox, https://openapi-sandbox.dl.alipaydev.com/gateway.do
                            (a live shop sets https://openapi.alipay.com/gateway.do explicitly)
    ALIPAY_SELLER_ID        optional 2088... partner id; notifications for another seller are refused
    ALIPAY_NOTIFY_URL       optional; by default derived from the request's host (+ /alipay/notify)
    ALIPAY_RETURN_URL       optional; by default derived from the request's host (+ /alipay/return)
    ALIPAY_LEDGER           default: alipay-ledger.sqlite3 in the working directory (sqlite:///path URL)
    SHOP_DATABASE           default shop.sqlite3 (in the working directory)

Demo mode (no ALIPAY_APP_ID): keys generated once under ``.demo/`` in the working directory, the
databases there too, and the gateway is the stand-in of ``demo_gateway.py`` served by the shop itself.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import demo_gateway
from alipay_middleware import SANDBOX_GATEWAY, OpenApiConfig

CST = timezone(timedelta(hours=8))  # Beijing time, used for order numbers


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    price: Decimal


PRODUCTS: dict[str, Product] = {p.id: p for p in (
    Product("tea", "Longjing green tea, 100 g", Decimal("9.90")),
    Product("cup", "Celadon tea cup", Decimal("25.00")),
)}

PENDING, PAID, CLOSED = "pending", "paid", "closed"


@dataclass(frozen=True)
class Order:
    out_trade_no: str
    product: str
    subject: str
    amount: Decimal
    status: str
    trade_no: str | None
    created_at: str
    paid_at: str | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    out_trade_no TEXT PRIMARY KEY,          -- our order number, sent to Alipay; unique
    product      TEXT NOT NULL,
    subject      TEXT NOT NULL,
    amount       TEXT NOT NULL,             -- Decimal as text ('9.90'): SQLite has no decimal type
    status       TEXT NOT NULL DEFAULT 'pending',
    trade_no     TEXT,                      -- Alipay's number, once paid
    created_at   TEXT NOT NULL,
    paid_at      TEXT
)
"""


class OrderStore:
    """The shop's orders in SQLite. A connection per call: cheap, and safe from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # ``with db`` commits (or rolls back); ``closing`` closes, which ``with db`` alone does not.
        with closing(sqlite3.connect(self.path, timeout=10)) as db, db:
            yield db

    def create(self, product: Product) -> Order:
        created = datetime.now(CST)
        for _ in range(5):  # a collision needs the same second and the same 32 random bits: retry anyway
            out_trade_no = f"{created:%Y%m%d%H%M%S}{secrets.token_hex(4).upper()}"
            try:
                with self._db() as db:
                    db.execute("INSERT INTO orders (out_trade_no, product, subject, amount, created_at) "
                               "VALUES (?, ?, ?, ?, ?)",
                               (out_trade_no, product.id, product.name, str(product.price),
                                created.isoformat(timespec="seconds")))
            except sqlite3.IntegrityError:
                continue
            order = self.get(out_trade_no)
            assert order is not None
            return order
        raise RuntimeError("could not find a free order number")

    _SELECT = "SELECT out_trade_no, product, subject, amount, status, trade_no, created_at, paid_at FROM orders"

    @staticmethod
    def _order(row: tuple[str, ...]) -> Order:
        return Order(row[0], row[1], row[2], Decimal(row[3]), row[4], row[5], row[6], row[7])

    def get(self, out_trade_no: str) -> Order | None:
        with self._db() as db:
            row = db.execute(f"{self._SELECT} WHERE out_trade_no = ?", (out_trade_no,)).fetchone()
        return None if row is None else self._order(row)

    def recent(self, limit: int = 5) -> list[Order]:
        with self._db() as db:
            rows = db.execute(f"{self._SELECT} ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [self._order(row) for row in rows]

    def amount(self, out_trade_no: str) -> Decimal | None:
        """For ``@alipay.order_amount``: what this order costs, None when it is not one of ours."""
        with self._db() as db:
            row = db.execute("SELECT amount FROM orders WHERE out_trade_no = ?", (out_trade_no,)).fetchone()
        return Decimal(row[0]) if row else None

    def mark_paid(self, out_trade_no: str, trade_no: str, paid_at: datetime | None) -> bool:
        """Idempotent: only the first call changes the row. True when it did."""
        # The middleware already calls on_paid once per trade; the WHERE makes the write safe on its own
        # too (a hook retried after a crash between our commit and the ledger's "done").
        with self._db() as db:
            changed = db.execute(
                "UPDATE orders SET status = ?, trade_no = ?, paid_at = ? WHERE out_trade_no = ? AND status != ?",
                (PAID, trade_no, (paid_at or datetime.now(CST)).isoformat(timespec="seconds"), out_trade_no, PAID),
            ).rowcount
        return changed == 1

    def mark_closed(self, out_trade_no: str) -> bool:
        """A trade closed unpaid (timed out at Alipay): a pending order becomes closed, a paid one stays."""
        with self._db() as db:
            changed = db.execute("UPDATE orders SET status = ? WHERE out_trade_no = ? AND status = ?",
                                 (CLOSED, out_trade_no, PENDING)).rowcount
        return changed == 1


# -- settings -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopSettings:
    config: OpenApiConfig
    database: Path
    ledger: str
    #: Demo mode only: the stand-in checkout that the shop serves at ``demo_gateway.MOUNT``.
    demo_gateway: demo_gateway.DemoGateway | None = None

    @property
    def demo(self) -> bool:
        return self.demo_gateway is not None


def settings_from_env(env: Mapping[str, str] = os.environ, *, demo_origin: str = "http://127.0.0.1:8000",
                      workdir: Path | None = None) -> ShopSettings:
    """Real (sandbox or live) settings when ALIPAY_APP_ID is set, demo settings otherwise.

    ``demo_origin`` is where the demo shop will be reached: its gateway URL is built from it.
    """
    where = workdir or Path.cwd()
    if not env.get("ALIPAY_APP_ID"):
        return demo_settings(where / ".demo", demo_origin)
    missing = [name for name in ("ALIPAY_APP_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY") if not env.get(name)]
    if missing:
        raise SystemExit(f"ALIPAY_APP_ID is set but {', '.join(missing)} is not: set both keys, "
                         "or unset ALIPAY_APP_ID to run the demo")
    config = OpenApiConfig(
        app_id=env["ALIPAY_APP_ID"].strip(),
        app_private_key=env["ALIPAY_APP_PRIVATE_KEY"],
        alipay_public_key=env["ALIPAY_PUBLIC_KEY"],
        gateway=env.get("ALIPAY_GATEWAY") or SANDBOX_GATEWAY,
        seller_id=env.get("ALIPAY_SELLER_ID") or None,
        notify_url=env.get("ALIPAY_NOTIFY_URL") or None,
        return_url=env.get("ALIPAY_RETURN_URL") or None,
    )
    return ShopSettings(
        config=config,
        database=where / env.get("SHOP_DATABASE", "shop.sqlite3"),
        ledger=env.get("ALIPAY_LEDGER") or f"sqlite:///{(where / 'alipay-ledger.sqlite3').resolve()}",
    )


def demo_settings(state_dir: Path, origin: str) -> ShopSettings:
    """Everything on embedded defaults: demo keys, databases and the stand-in gateway, all local."""
    keys = demo_gateway.load_or_create_keys(state_dir)
    config = OpenApiConfig(
        app_id=demo_gateway.DEMO_APP_ID,
        app_private_key=keys.app_private_pem,
        alipay_public_key=keys.alipay_public_pem,
        gateway=origin.rstrip("/") + demo_gateway.MOUNT + demo_gateway.GATEWAY_PATH,
        seller_id=demo_gateway.DEMO_SELLER_ID,
    )
    return ShopSettings(
        config=config,
        database=state_dir / "shop.sqlite3",
        # Four slashes: an absolute path, so the ledger does not depend on the working directory.
        ledger=f"sqlite:///{(state_dir / 'alipay-ledger.sqlite3').resolve()}",
        demo_gateway=demo_gateway.DemoGateway(keys),
    )
