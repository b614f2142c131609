"""The server fronts: WSGI and ASGI middleware and the driver that runs the callback flows for them (the only
place werkzeug and asgiref are imported)."""
