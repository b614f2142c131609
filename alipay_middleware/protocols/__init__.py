"""Protocol knowledge: the Open Platform and the legacy service, certificates, the shared validators and the
pay helper behind ``environ["alipay"]``."""
