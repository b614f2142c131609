"""``python -m alipay_middleware``: the operator's command line (see :mod:`alipay_middleware.cli`)."""

from .cli import main

raise SystemExit(main())
