"""What the example shops share, whatever the web framework: the catalogue, the orders, refunds, settings.

Settings come from the environment:

    ALIPAY_APP_ID           the 16-digit app id (unset: demo mode, see below)
    ALIPAY_APP_PRIVATE_KEY  the app's private key text (PEM, or the bare base64 line from the key tool)
    ALIPAY_PUBLIC_KEY       *Alipay's* public key as shown in the Open Platform console
    ALIPAY_GATEWAY          default: the sandbox, https://openapi-sandbox.dl.alipaydev.com/gateway.do
                            (a live shop sets https://openapi.alipay.com/gateway.do explicitly)
    ALIPAY_SELLER_ID        optional 2088... partner id; notifications for another seller are refused
    ALIPAY_NOTIFY_URL       e.g. https://shop.example/alipay/notify: where Alipay sends notifications
    ALIPAY_RETURN_URL       e.g. https://shop.example/alipay/return: where the buyer comes back
    ALIPAY_ALLOWED_HOSTS    instead of the two URLs: the shop's host names, comma-separated
                            (shop.example,www.shop.example); the URLs are then derived from requests to
                            those hosts (+ /alipay/notify, /alipay/return). Loopback is always allowed.
    ALIPAY_LEDGER           default: alipay-ledger.sqlite3 in the working directory (sqlite:///path URL)
    SHOP_DATABASE           default shop.sqlite3 (in the working directory)

Demo mode (no ALIPAY_APP_ID, ``python examples/demo.py``): keys generated once under ``.demo/`` in the
working directory, the databases there too, and the gateway is a local Alipay simulator
(``alipay_middleware.simulator``) on its own port.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from Crypto.PublicKey import RSA

from alipay_middleware import (
    SANDBOX_GATEWAY,
    AlipayApiError,
    AlipayClient,
    AlipayError,
    GatewayUnavailable,
    LegacyClient,
    OpenApiConfig,
    OutcomeUnknown,
    format_amount,
)

log = logging.getLogger("shop")

CST = timezone(timedelta(hours=8))  # Beijing time, used for order numbers

#: The demo's identities (16-digit app id, 2088... seller id), known to the demo's simulator.
DEMO_APP_ID = "2021000000000000"
DEMO_SELLER_ID = "2088000000000000"
DEMO_SHOP_NAME = "Demo Tea Shop"


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    price: Decimal


PRODUCTS: dict[str, Product] = {p.id: p for p in (
    Product("tea", "Longjing green tea, 100 g", Decimal("9.90")),
    Product("cup", "Celadon tea cup", Decimal("25.00")),
)}

# An order's status. A partial refund leaves a paid order "paid" with ``refunded_amount`` > 0;
# "refunded" means all of it came back.
PENDING, PAID, CLOSED, REFUNDED = "pending", "paid", "closed", "refunded"

# A refund request's state. Only the notification (``on_refunded``) makes one "done".
SENDING = "sending"      # written before the call, so a crash mid-call still leaves its number to retry with
ACCEPTED = "accepted"    # Alipay said yes; its notification is on the way
UNKNOWN = "unknown"      # no trustworthy answer: retried with the same number, never a new one
REFUSED = "refused"      # Alipay said no, or could not be reached: nothing moved
DONE = "done"            # the refund notification arrived
OPEN_STATES = (SENDING, UNKNOWN)


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
    refunded_amount: Decimal


@dataclass(frozen=True)
class Refund:
    out_request_no: str
    out_trade_no: str
    amount: Decimal
    state: str
    message: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    out_trade_no    TEXT PRIMARY KEY,       -- our order number, sent to Alipay; unique
    product         TEXT NOT NULL,
    subject         TEXT NOT NULL,
    amount          TEXT NOT NULL,          -- Decimal as text ('9.90'): SQLite has no decimal type
    status          TEXT NOT NULL DEFAULT 'pending',
    trade_no        TEXT,                   -- Alipay's number, once paid
    created_at      TEXT NOT NULL,
    paid_at         TEXT,
    refunded_amount TEXT NOT NULL DEFAULT '0.00'  -- as Alipay's refund notifications report it
);
CREATE TABLE IF NOT EXISTS refunds (
    out_request_no TEXT PRIMARY KEY,        -- our idempotency key at Alipay: one per intended refund
    out_trade_no   TEXT NOT NULL REFERENCES orders,
    amount         TEXT NOT NULL,
    state          TEXT NOT NULL,
    message        TEXT NOT NULL DEFAULT '',
    created_at     TEXT NOT NULL
);
"""


class OrderStore:
    """The shop's orders in SQLite. A connection per call: cheap, and safe from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(orders)")}
            if "refunded_amount" not in columns:  # a database from before refunds
                db.execute("ALTER TABLE orders ADD COLUMN refunded_amount TEXT NOT NULL DEFAULT '0.00'")

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

    _SELECT = ("SELECT out_trade_no, product, subject, amount, status, trade_no, created_at, paid_at, "
               "refunded_amount FROM orders")

    @staticmethod
    def _order(row: tuple[str, ...]) -> Order:
        return Order(row[0], row[1], row[2], Decimal(row[3]), row[4], row[5], row[6], row[7], Decimal(row[8]))

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
        order = self.get(out_trade_no)
        return None if order is None else order.amount

    def mark_paid(self, out_trade_no: str, trade_no: str, paid_at: datetime | None) -> bool:
        """Idempotent: only the first call changes the row. True when it did."""
        # The middleware already calls on_paid once per trade; the WHERE makes the write safe on its own
        # too (a hook retried after a crash between our commit and the ledger's "done"). A refund may
        # overtake the payment's notification: then the status stays what the refund made it.
        with self._db() as db:
            changed = db.execute(
                "UPDATE orders SET trade_no = ?, paid_at = ?, status = CASE WHEN status IN (?, ?) THEN ? "
                "ELSE status END WHERE out_trade_no = ? AND paid_at IS NULL",
                (trade_no, (paid_at or datetime.now(CST)).isoformat(timespec="seconds"),
                 PENDING, CLOSED, PAID, out_trade_no),
            ).rowcount
        return changed == 1

    def mark_closed(self, out_trade_no: str) -> bool:
        """A trade closed unpaid (timed out at Alipay): a pending order becomes closed, a paid one stays."""
        with self._db() as db:
            changed = db.execute("UPDATE orders SET status = ? WHERE out_trade_no = ? AND status = ?",
                                 (CLOSED, out_trade_no, PENDING)).rowcount
        return changed == 1

    def mark_refunded(self, out_trade_no: str, out_request_no: str | None, total_refunded: Decimal | None) -> None:
        """``on_refunded``: the refund ``out_request_no`` happened; ``total_refunded`` is the trade's total
        so far (Alipay's ``refund_fee``). Idempotent, and order-proof: the total only ever grows."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # read and write the totals without another writer in between
            row = db.execute("SELECT amount, refunded_amount FROM orders WHERE out_trade_no = ?",
                             (out_trade_no,)).fetchone()
            if row is None:
                log.warning("refund notification for unknown order %s", out_trade_no)
                return
            amount, refunded = Decimal(row[0]), Decimal(row[1])
            mine = db.execute("SELECT amount, state FROM refunds WHERE out_request_no = ? AND out_trade_no = ?",
                              (out_request_no, out_trade_no)).fetchone()
            if total_refunded is None:  # not reported: count this request's own amount, once
                total_refunded = refunded + (Decimal(mine[0]) if mine and mine[1] != DONE else 0)
            refunded = min(amount, max(refunded, total_refunded))
            db.execute("UPDATE orders SET refunded_amount = ?, status = ? WHERE out_trade_no = ?",
                       (str(refunded), REFUNDED if refunded >= amount else PAID, out_trade_no))
            db.execute("UPDATE refunds SET state = ?, message = ? WHERE out_request_no = ?",
                       (DONE, "Refunded: Alipay confirmed it to us.", out_request_no))

    # -- refund requests --

    def refunds(self, out_trade_no: str) -> list[Refund]:
        with self._db() as db:
            return self._refunds(db, out_trade_no)

    def with_refunds(self, out_trade_no: str) -> tuple[Order, list[Refund]] | None:
        """The order and its refunds as of one moment (a refund notification may land in between)."""
        with self._db() as db:
            db.execute("BEGIN")  # one read transaction: both SELECTs see the same snapshot
            row = db.execute(f"{self._SELECT} WHERE out_trade_no = ?", (out_trade_no,)).fetchone()
            return None if row is None else (self._order(row), self._refunds(db, out_trade_no))

    @staticmethod
    def _refunds(db: sqlite3.Connection, out_trade_no: str) -> list[Refund]:
        rows = db.execute("SELECT out_request_no, out_trade_no, amount, state, message FROM refunds "
                          "WHERE out_trade_no = ? ORDER BY created_at, rowid", (out_trade_no,)).fetchall()
        return [Refund(r[0], r[1], Decimal(r[2]), r[3], r[4]) for r in rows]

    def open_refund(self, order: Order, amount: Decimal) -> Refund:
        """The refund request to send: the unfinished one if there is one (same number, same amount:
        Alipay refunds a request number at most once), else a new one for ``amount``. Raises ValueError
        when ``amount`` is more than what is left to refund."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")  # two clicks at once: the second sees the first's request
            earlier = self._refunds(db, order.out_trade_no)
            for request in earlier:
                if request.state in OPEN_STATES:
                    return request
            row = db.execute(f"{self._SELECT} WHERE out_trade_no = ?", (order.out_trade_no,)).fetchone()
            left = left_to_refund(self._order(row), earlier)
            if amount > left:
                raise ValueError(f"At most ¥{left} can still be refunded.")
            number = f"{order.out_trade_no}R{len(earlier) + 1}"
            db.execute("INSERT INTO refunds (out_request_no, out_trade_no, amount, state, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", (number, order.out_trade_no, str(amount), SENDING,
                                                  datetime.now(CST).isoformat(timespec="seconds")))
        return Refund(number, order.out_trade_no, amount, SENDING, "")

    def set_refund(self, out_request_no: str, state: str, message: str) -> None:
        with self._db() as db:  # never undoes "done": the notification may have come first
            db.execute("UPDATE refunds SET state = ?, message = ? WHERE out_request_no = ? AND state != ?",
                       (state, message, out_request_no, DONE))


def left_to_refund(order: Order, refunds: list[Refund]) -> Decimal:
    """What may still be refunded: the amount less what is refunded and what Alipay has accepted."""
    on_the_way = sum((r.amount for r in refunds if r.state == ACCEPTED), Decimal(0))
    return max(Decimal("0.00"), order.amount - order.refunded_amount - on_the_way)


# -- refunds --------------------------------------------------------------------------------------------


def refund(store: OrderStore, client: AlipayClient | LegacyClient, out_trade_no: str, amount_text: str) -> str | None:
    """Ask Alipay to refund ``amount_text`` of a paid order. Returns an error for the buyer's input, or
    None when a request was made: its outcome, good or bad, is on the refund's row for the order page.

    The order itself changes only when Alipay's refund notification arrives (``on_refunded``): an
    accepted refund is not yet a refund the shop has seen happen.
    """
    order = store.get(out_trade_no)
    if order is None or order.status not in (PAID, REFUNDED) or order.trade_no is None:
        return "Only a paid order can be refunded."
    try:
        amount = Decimal(format_amount(amount_text.strip(), "refund amount"))
    except ValueError:
        return f"{amount_text[:20]!r} is not an amount in yuan, like 9.90."
    try:
        request = store.open_refund(order, amount)
    except ValueError as exc:
        return str(exc)
    try:
        result = client.refund(out_trade_no=out_trade_no, refund_amount=request.amount,
                               out_request_no=request.out_request_no)
    except OutcomeUnknown as exc:
        # The refund may or may not have happened. Retrying with the *same* number is safe (Alipay
        # makes it once); a new number could refund twice.
        state, message = UNKNOWN, (f"We could not tell whether Alipay made this refund ({exc.reason}). "
                                   "Press Retry: it repeats this same request, which Alipay carries "
                                   "out at most once.")
    except AlipayApiError as exc:
        state, message = REFUSED, f"Alipay refused the refund: {exc.sub_msg or exc.msg} ({exc.sub_code or exc.code})."
    except GatewayUnavailable:
        state, message = REFUSED, "Alipay could not be reached; nothing was sent. Try again later."
    except AlipayError as exc:
        state, message = UNKNOWN, f"Unexpected answer from Alipay ({type(exc).__name__}); press Retry."
    else:
        if result.confirmed:
            state, message = ACCEPTED, "Accepted by Alipay; waiting for its refund notification."
        else:
            state, message = UNKNOWN, ("Alipay took the request but does not show the refund yet. "
                                       "Press Retry to ask again (same request).")
    log.info("refund %s of order %s: %s", request.out_request_no, out_trade_no, state)
    store.set_refund(request.out_request_no, state, message)
    return None


# -- settings -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopSettings:
    config: OpenApiConfig
    database: Path
    ledger: str
    demo: bool = False  # demo mode: the gateway is the local simulator, the page says so
    #: ``Alipay(allowed_hosts=...)``: None when not configured (the middleware warns if the URLs are not either).
    allowed_hosts: tuple[str, ...] | None = None
    #: ``Alipay(confirm_returns=...)``: a verified return asks Alipay whether the order is paid, so that a
    #: notification that comes late (or not at all) does not leave "Pay now" on a paid order.
    confirm_returns: bool = True


def settings_from_env(env: Mapping[str, str] = os.environ, *, workdir: Path | None = None) -> ShopSettings:
    """Real (sandbox or live) settings from ALIPAY_* variables. Raises SystemExit when they are missing."""
    where = workdir or Path.cwd()
    missing = [name for name in ("ALIPAY_APP_ID", "ALIPAY_APP_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY") if not env.get(name)]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not set: configure your Alipay app (see examples/shop_core.py), "
                         "or run the no-account demo: python examples/demo.py")
    config = OpenApiConfig(
        app_id=env["ALIPAY_APP_ID"].strip(),
        app_private_key=env["ALIPAY_APP_PRIVATE_KEY"],
        alipay_public_key=env["ALIPAY_PUBLIC_KEY"],
        gateway=env.get("ALIPAY_GATEWAY") or SANDBOX_GATEWAY,
        seller_id=env.get("ALIPAY_SELLER_ID") or None,
        notify_url=env.get("ALIPAY_NOTIFY_URL") or None,
        return_url=env.get("ALIPAY_RETURN_URL") or None,
    )
    hosts = env.get("ALIPAY_ALLOWED_HOSTS")
    return ShopSettings(
        config=config,
        database=where / env.get("SHOP_DATABASE", "shop.sqlite3"),
        ledger=env.get("ALIPAY_LEDGER") or f"sqlite:///{(where / 'alipay-ledger.sqlite3').resolve()}",
        allowed_hosts=None if hosts is None else tuple(h.strip() for h in hosts.split(",") if h.strip()),
    )


@dataclass(frozen=True)
class DemoKeys:
    """The demo app's key pair (signs the shop's requests) and the simulated Alipay's (signs callbacks)."""

    app_private_pem: str
    alipay_private_pem: str

    @property
    def app_public_pem(self) -> str:
        return str(RSA.import_key(self.app_private_pem).public_key().export_key().decode("ascii"))


def load_or_create_keys(state_dir: Path) -> DemoKeys:
    """Read the demo keys from ``state_dir``, generating them (RSA 2048) on first use.

    Kept on disk so that a restart can still verify what was signed before it (orders half-way through
    the checkout, notifications being retried). The directory gets its own ``.gitignore`` of ``*`` so
    the keys are never committed, whatever repository it ends up in.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    ignore = state_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# demo keys and databases: never commit\n*\n", encoding="ascii")
    return DemoKeys(app_private_pem=_load_or_create_key(state_dir / "demo-app-private.pem"),
                    alipay_private_pem=_load_or_create_key(state_dir / "demo-alipay-private.pem"))


def _load_or_create_key(path: Path) -> str:
    if not path.exists():
        pem = RSA.generate(2048).export_key()
        # Written under a temporary name, then linked into place: the link fails if another process
        # created the key meanwhile, and then both processes use that one (never half a file).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text(encoding="ascii")


def demo_settings(state_dir: Path, keys: DemoKeys, alipay_public_key: str, gateway: str) -> ShopSettings:
    """The shop's side of the demo: the demo app's key, the simulator's public key and gateway URL."""
    config = OpenApiConfig(
        app_id=DEMO_APP_ID,
        app_private_key=keys.app_private_pem,
        alipay_public_key=alipay_public_key,
        gateway=gateway,
        seller_id=DEMO_SELLER_ID,
    )
    return ShopSettings(
        config=config,
        database=state_dir / "shop.sqlite3",
        # Four slashes: an absolute path, so the ledger does not depend on the working directory.
        ledger=f"sqlite:///{(state_dir / 'alipay-ledger.sqlite3').resolve()}",
        demo=True,
        # The demo is served on 127.0.0.1, and loopback is the one Host the callback URLs may always be
        # derived from; an explicit empty list says so (and spares the start-up warning).
        allowed_hosts=(),
    )
