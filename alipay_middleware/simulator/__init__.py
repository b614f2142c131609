"""A local Alipay gateway simulator: a test double that plays Alipay on a loopback port. It moves no money.

::

    from alipay_middleware.simulator import Simulator, Merchant

    sim = Simulator(merchants=[Merchant(app_id="2021000000000000", public_key=app_public_pem)],
                    time_scale=0.001)
    server = sim.serve()            # http://127.0.0.1:PORT, loopback only
    config = OpenApiConfig(app_id=..., app_private_key=..., alipay_public_key=sim.alipay_public_key_pem,
                           gateway=server.gateway_url)

It verifies the shop's signed pay requests (Open Platform page/wap pay, legacy
``create_direct_pay_by_user`` with MD5 or RSA) exactly as Alipay does and shows a checkout page (Pay /
Cancel / Let it time out); answers ``alipay.trade.query``/``refund``/``close``/``fastpay.refund.query``,
``notify_verify`` and ``single_trade_query`` consistently with what happened there; sends signed
notifications on Alipay's resend schedule (times ``time_scale``) until it gets ``success``; and
redirects the browser to the signed return_url. With ``state_path`` (SQLite) trades, notify ids and
pending resends survive a restart. The admin page at ``/`` lists orders and deliveries, newest first in
pages of 50, and switches faults on (:class:`Faults`):

- ``duplicate_notify``: every delivery is sent twice at once;
- ``out_of_order``: a trade's notification is held back until the next one of that trade (a refund, a
  close) has been delivered, or until the first resend interval passes;
- ``notify_before_return``: the first delivery is made and answered before the browser is redirected
  (otherwise the redirect goes first and the notification right after);
- ``foreign_app_id``: a correctly signed copy for another app id (legacy: another seller_id) is sent too;
- ``tamper_amount``: the notification is *signed* with a wrong ``total_amount`` (0.01), so only the
  shop's own amount check can catch it (a change after signing would only test the signature check).

Security: it accepts whatever keys it is given and binds to loopback only; callbacks go to loopback
URLs only unless ``allow_remote_callbacks=True``. Never expose it to a network. It answers only requests
whose Host is a loopback name or its bound address (421 otherwise: DNS rebinding), and refuses with 403 a
POST to its own pages (fault switches, checkout) sent from another origin (see ``guard``).
"""

from __future__ import annotations

from .app import Simulator
from .callbacks import FOREIGN_APP_ID, FOREIGN_PARTNER
from .model import Delivery, Faults, GatewayError, LegacyMerchant, Merchant, Refund, SimTrade
from .notifier import SCHEDULE
from .server import SimServer

__all__ = ["FOREIGN_APP_ID", "FOREIGN_PARTNER", "SCHEDULE", "Delivery", "Faults", "GatewayError", "LegacyMerchant",
           "Merchant", "Refund", "SimServer", "SimTrade", "Simulator"]
