"""The steps a flow yields to its driver: each blocking or user-supplied call, made by the driver."""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from .answers import Answer


@dataclass(frozen=True)
class Call:
    """One step for the driver: call ``fn(*args)`` (sync or async) and send back the result."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
#: A flow: yields calls, is sent back their results (typed ``object`` here: see :func:`step`), returns a ``T``.
Steps = Generator[Call, object, T]
Flow = Steps[Answer]


def step(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Steps[R]:
    """Have the driver call ``fn(*args, **kwargs)``; the result comes back typed as ``fn`` returns it.

    ``claim = yield from step(ledger.claim, event, ...)`` makes ``claim`` a ``Claim`` and checks the
    arguments against ``claim``'s signature, where a bare ``yield Call(...)`` gives an ``object``. The
    driver awaits what a user's ``async def`` returns, so a user function is typed as returning ``object``.
    """
    result = yield Call(functools.partial(fn, **kwargs) if kwargs else fn, args)
    return cast(R, result)
