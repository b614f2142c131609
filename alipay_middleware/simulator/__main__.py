"""``python -m alipay_middleware.simulator``: run the simulator on a loopback port.

    python -m alipay_middleware.simulator --port 8001 --app-id 2021000000000000 \\
        --app-public-key app_public.pem --state sim.sqlite3

Alipay's key pairs are generated on first start and kept in ``--keys-dir`` (default: next to
``--state``; without either they live in memory and change at every start).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from Crypto.PublicKey import RSA

from .app import Simulator
from .model import LegacyMerchant, Merchant
from .notifier import KEEP_DELIVERIES, is_loopback_url
from .statefile import check_path

ALIPAY_KEY_FILE = "alipay-simulator-alipay-private.pem"
LEGACY_KEY_FILE = "alipay-simulator-legacy-private.pem"
#: Written next to the private keys: what the shop configures as ``alipay_public_key``.
ALIPAY_PUBLIC_FILE = "alipay-public-key.pem"
LEGACY_PUBLIC_FILE = "alipay-legacy-public-key.pem"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m alipay_middleware.simulator",
        description="A local Alipay gateway simulator (a test double: it moves no money). Loopback only.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001; 0 picks a free one)")
    parser.add_argument("--app-id", action="append", default=[], metavar="ID",
                        help="an Open Platform app id to register (repeatable, one --app-public-key each)")
    parser.add_argument("--app-public-key", action="append", default=[], metavar="FILE",
                        help="the app's public key file (PEM or the console's bare base64)")
    parser.add_argument("--seller-id", default="2088000000000000", help="seller id (2088...) for the apps")
    parser.add_argument("--name", default="Demo shop", help="merchant name shown on the checkout page")
    parser.add_argument("--partner", help="a legacy partner id (2088..., 16 digits) to register")
    parser.add_argument("--md5-key", help="the legacy partner's 32-character MD5 key")
    parser.add_argument("--legacy-rsa-public-key", metavar="FILE",
                        help="the legacy partner's 1024-bit RSA public key file (for sign_type=RSA)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplies Alipay's notification resend schedule (e.g. 0.01)")
    parser.add_argument("--state", metavar="FILE",
                        help="keep trades, notify ids and pending resends in FILE (SQLite: .sqlite3 or .db)")
    parser.add_argument("--keep-deliveries", type=int, default=KEEP_DELIVERIES, metavar="N",
                        help=f"how many notification attempts the admin page's log keeps (default {KEEP_DELIVERIES})")
    parser.add_argument("--keys-dir", metavar="DIR", help="where the generated Alipay keys are kept")
    parser.add_argument("--allow-remote-callbacks", action="store_true",
                        help="also call notify/return URLs that are not loopback addresses")
    return parser


def _read(parser: argparse.ArgumentParser, path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"{flag} {path}: cannot read the key file ({exc}); give the path of a PEM/base64 key file")


def _key(keys_dir: Path | None, name: str, bits: int) -> str:
    if keys_dir is None:
        return RSA.generate(bits).export_key().decode("ascii")
    path = keys_dir / name
    if path.exists():
        return path.read_text(encoding="ascii")
    keys_dir.mkdir(parents=True, exist_ok=True)
    text = RSA.generate(bits).export_key().decode("ascii")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)
    return text


def configure(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Simulator:
    if not is_loopback_url(f"http://{args.host}/"):
        parser.error(f"--host {args.host}: the simulator binds to loopback only; use 127.0.0.1 or ::1")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: give a port between 1 and 65535 (or 0 for any free port)")
    if len(args.app_id) != len(args.app_public_key):
        parser.error("give one --app-public-key FILE for every --app-id (and no key without an app id)")
    if args.partner is None and (args.md5_key or args.legacy_rsa_public_key):
        parser.error("--md5-key/--legacy-rsa-public-key belong to a legacy merchant: add --partner 2088...")
    if args.partner is not None and not (args.md5_key or args.legacy_rsa_public_key):
        parser.error("--partner needs --md5-key KEY and/or --legacy-rsa-public-key FILE")
    if not 0 < args.time_scale <= 1000:
        parser.error(f"--time-scale {args.time_scale}: give a positive factor, e.g. 1 (real schedule) or 0.01")
    if args.state:
        try:
            check_path(Path(args.state))
        except ValueError as exc:
            parser.error(f"--state {args.state}: {str(exc).replace('state_path', 'the file')}")
    if args.keep_deliveries < 1:
        parser.error(f"--keep-deliveries {args.keep_deliveries}: give a positive number, e.g. 1000")
    try:
        merchants = [Merchant(app_id=app_id, public_key=_read(parser, path, "--app-public-key"),
                              seller_id=args.seller_id, name=args.name)
                     for app_id, path in zip(args.app_id, args.app_public_key, strict=True)]
        legacy = [] if args.partner is None else [LegacyMerchant(
            partner=args.partner, md5_key=args.md5_key, name=args.name,
            rsa_public_key=_read(parser, args.legacy_rsa_public_key, "--legacy-rsa-public-key")
            if args.legacy_rsa_public_key else None)]
    except ValueError as exc:
        parser.error(str(exc))
    keys_dir = Path(args.keys_dir) if args.keys_dir else (Path(args.state).resolve().parent if args.state else None)
    try:
        simulator = Simulator(merchants, legacy, alipay_private_key=_key(keys_dir, ALIPAY_KEY_FILE, 2048),
                              legacy_private_key=_key(keys_dir, LEGACY_KEY_FILE, 1024), time_scale=args.time_scale,
                              state_path=args.state, allow_remote_callbacks=args.allow_remote_callbacks,
                              keep_deliveries=args.keep_deliveries)
        if keys_dir is not None:
            (keys_dir / ALIPAY_PUBLIC_FILE).write_text(simulator.alipay_public_key_pem, encoding="ascii")
            (keys_dir / LEGACY_PUBLIC_FILE).write_text(simulator.legacy_public_key_pem, encoding="ascii")
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    return simulator


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    simulator = configure(parser, args)
    try:
        server = simulator.serve(args.host, args.port)
    except OSError as exc:
        simulator.close()
        parser.error(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                     "choose another port, or 0 for any free one")
    print("Alipay SIMULATOR (not Alipay; moves no money)")
    print(f"  admin page:   {server.url}/")
    print(f"  gateway URL:  {server.gateway_url}   (OpenApiConfig/LegacyConfig gateway=...)")
    print("  Alipay public key (OpenApiConfig.alipay_public_key):")
    print(simulator.alipay_public_key_pem)
    keys_dir = Path(args.keys_dir) if args.keys_dir else (Path(args.state).resolve().parent if args.state else None)
    if keys_dir is not None:
        print(f"  (also written to {keys_dir / ALIPAY_PUBLIC_FILE}; the legacy one to {keys_dir / LEGACY_PUBLIC_FILE})")
    if args.partner and args.legacy_rsa_public_key:
        print("  legacy Alipay public key (LegacyConfig.alipay_public_key):")
        print(simulator.legacy_public_key_pem)
    for app_id in args.app_id:
        print(f"  registered app {app_id} (seller_id {args.seller_id})")
    if args.partner:
        print(f"  registered legacy partner {args.partner}")
    if not args.app_id and not args.partner:
        print("  No merchant registered: restart with --app-id ID --app-public-key FILE (Open Platform) "
              "or --partner 2088... --md5-key KEY (legacy).")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
