"""The steps a flow yields to its driver: each blocking or user-supplied call, made by the driver."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from .answers import Answer


@dataclass(frozen=True)
class Call:
    """One step for the driver: call ``fn(*args)`` (sync or async) and send back the result."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


T = TypeVar("T")
Steps = Generator[Call, Any, T]
Flow = Steps[Answer]
