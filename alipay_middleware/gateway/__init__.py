"""Talking to Alipay: one transport for every outbound call, the result types, the Open Platform and legacy clients.

- ``transport.py``: every HTTP exchange with Alipay (deadlines, proxy, no redirects) and ``notify_verify``;
- ``base.py``: what both clients share (settings, the retry loop, the log line); ``fields.py``: their fields;
- ``results.py``: ``TradeQuery``, ``RefundResult``, ``RefundQuery``, ``CloseResult``;
- ``client.py``: ``AlipayClient`` (Open Platform); ``legacy_client.py``: ``LegacyClient`` (``single_trade_query``);
- ``factory.py``: the choice between the two; ``aio.py``: ``AsyncAlipayClient``, the same calls in a thread.

This layer never imports the layers above it: it takes an ``Alipay`` by structure (``base.Host``,
``aio.PooledHost``).
"""
