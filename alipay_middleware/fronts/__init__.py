"""The server fronts: WSGI and ASGI middleware and the driver that runs the callback flows for them.

The only place werkzeug and asgiref are imported. The fronts know ``Alipay`` only through ``port.py``.
"""
