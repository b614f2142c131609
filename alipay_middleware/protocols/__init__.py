"""Protocol knowledge: the Open Platform, the legacy service, certificates, shared validators, the pay helper.

The pay helper is what a request finds in ``environ["alipay"]`` / ``scope["alipay"]``.
"""
