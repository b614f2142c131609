"""The sans-I/O core imports only the standard library and pycryptodome; the fronts stay thin."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = ["callbacks.flow", "protocols.base", "protocols.openapi", "wire.signing", "wire.keys", "wire.form",
                "events", "protocols.helper", "errors", "ledger", "ledger.sqlite"]


def test_core_never_imports_werkzeug_or_asgiref():
    imports = "; ".join(f"import alipay_middleware.{m}" for m in CORE_MODULES)
    code = f"import sys; {imports}; print(sorted(m for m in ('werkzeug', 'asgiref') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve():
    import alipay_middleware

    for name in alipay_middleware.__all__:
        assert getattr(alipay_middleware, name) is not None
