"""The public surface: re-export-only ``__init__`` modules, as trio's test_exports checks.

Every public name of ``trio_realtime``, ``trio_realtime.protocol`` and ``trio_realtime.testing``
must be re-exported explicitly as ``from ._x import Name as Name`` (so type checkers treat it
as public), nothing else may be public, private helpers must not leak, and public classes and
functions must say they live in a public package (``repr``, pickles and docs show that path).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

import trio_realtime

PACKAGES = ["trio_realtime", "trio_realtime.protocol", "trio_realtime.testing"]
#: Public sub-packages that appear as attributes of ``trio_realtime`` once imported.
SUBPACKAGES = {"protocol", "testing", "server"}
#: Packages whose ``__init__`` does not yet rewrite ``__module__`` the way
#: ``trio_realtime/__init__.py`` does (``_fix_module``). Names only they export still show
#: their private module; remove a package from here once its ``__init__`` is fixed.
MODULE_NOT_FIXED: set[str] = set()


def _init_tree(package: str) -> ast.Module:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    return ast.parse(Path(module.__file__).read_text(encoding="utf-8"))


def _reexports(package: str) -> list[ast.alias]:
    return [
        alias for node in _init_tree(package).body if isinstance(node, ast.ImportFrom) for alias in node.names
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_init_only_reexports(package: str) -> None:
    """The ``__init__`` holds a docstring and ``from ... import X as X`` lines, nothing else
    (plus the call and ``del`` of the ``fix_module_names`` helper)."""
    for node in _init_tree(package).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom):
            assert node.level >= 1, f"{package}: absolute import {ast.unparse(node)!r}"
            for alias in node.names:
                assert alias.asname == alias.name, (
                    f"{package}: {ast.unparse(node)!r} must re-export as '{alias.name} as {alias.name}'"
                )
            continue
        if "fix_module_names" in ast.unparse(node):
            continue  # the __module__ fix-up: called, then deleted
        pytest.fail(f"{package}/__init__.py has a statement that is not a re-export: {ast.unparse(node)!r}")


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_are_exactly_the_reexports(package: str) -> None:
    module = importlib.import_module(package)
    reexported = {
        alias.name
        for alias in _reexports(package)
        if not alias.name.startswith("_") and alias.name != "fix_module_names"
    }
    public = {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not (name in SUBPACKAGES and isinstance(getattr(module, name), types.ModuleType))
    }
    assert public == reexported


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_names_leak(package: str) -> None:
    module = importlib.import_module(package)
    for alias in _reexports(package):
        assert not alias.name.startswith("_") or alias.name == "__version__", (
            f"{package} re-exports the private name {alias.name!r}"
        )
    for name in dir(module):
        if name.startswith("_") and not name.startswith("__"):
            # Only private submodules (imported as a side effect) may be there, not helpers.
            assert isinstance(getattr(module, name), types.ModuleType), f"{package}.{name} leaks"
    for name in dir(module):
        value = getattr(module, name)
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value)):
            assert not value.__name__.startswith("_"), f"{package}.{name} is {value.__name__}"


def _public_objects() -> list[object]:
    params = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in sorted(dir(module)):
            value = getattr(module, name)
            if name.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            marks = []
            if package in MODULE_NOT_FIXED and not hasattr(trio_realtime, name):
                marks.append(
                    pytest.mark.xfail(
                        strict=True, reason=f"{package}/__init__.py does not fix __module__ yet"
                    )
                )
            params.append(pytest.param(package, name, marks=marks, id=f"{package}.{name}"))
    return params


@pytest.mark.parametrize(("package", "name"), _public_objects())
def test_public_objects_name_a_public_module(package: str, name: str) -> None:
    value = getattr(importlib.import_module(package), name)
    assert value.__module__ in PACKAGES, f"{package}.{name}.__module__ is {value.__module__!r}"
    assert getattr(importlib.import_module(value.__module__), value.__qualname__) is value


def test_shared_names_are_the_same_objects() -> None:
    import trio_realtime.protocol

    for name in dir(trio_realtime.protocol):
        if not name.startswith("_") and hasattr(trio_realtime, name):
            assert getattr(trio_realtime, name) is getattr(trio_realtime.protocol, name)


def test_factory_built_classes_have_no_public_constructor() -> None:
    from trio_realtime.testing import MemoryTransport

    for cls in (trio_realtime.RealtimeClient, trio_realtime.Subscription, MemoryTransport):
        with pytest.raises(TypeError, match=r"no public constructor"):
            cls()
