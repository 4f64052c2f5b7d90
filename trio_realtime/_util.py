"""Small shared helpers."""

from __future__ import annotations

from abc import ABCMeta
from typing import Any, TypeVar

__all__ = ["NoPublicConstructor", "fix_module_names"]

T = TypeVar("T")


class NoPublicConstructor(ABCMeta):
    """Metaclass for classes only factories build (trio's pattern).

    ``Cls(...)`` raises TypeError; the factory calls ``Cls._create(...)``.
    """

    def __call__(cls, *args: object, **kwargs: object) -> Any:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


def fix_module_names(namespace: dict[str, Any], module: str) -> None:
    """Make public names re-exported by ``module`` show as ``module.X`` (as trio does).

    Only objects defined below ``module`` (``module._private``) are renamed.
    """
    prefix = module + "."
    for name, value in namespace.items():
        if name.startswith("_") or not getattr(value, "__module__", "").startswith(prefix):
            continue
        try:
            value.__module__ = module
        except (AttributeError, TypeError):
            pass
