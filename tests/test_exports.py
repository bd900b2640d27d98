"""The public surface: one sorted, complete __all__, and one exception hierarchy."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest

import bingx_async
from bingx_async import BingXError


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then everything else, each A-Z."""
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_all_is_sorted() -> None:
    """__all__ is sorted (constants, classes, functions, as ruff sorts it), no duplicates."""
    assert bingx_async.__all__ == sorted(bingx_async.__all__, key=_isort_key)
    assert len(set(bingx_async.__all__)) == len(bingx_async.__all__)


@pytest.mark.parametrize("name", bingx_async.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    """`from bingx_async import <name>` works for every name in __all__."""
    module = importlib.import_module("bingx_async")
    assert getattr(module, name) is not None


def test_every_public_name_is_in_all() -> None:
    """Every public attribute that is not a submodule is listed in __all__."""
    public = {
        name
        for name, value in vars(bingx_async).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and name not in {"annotations", "logging", "version", "PackageNotFoundError"}
    }
    assert public <= set(bingx_async.__all__)


def test_public_names_come_from_private_modules() -> None:
    """Classes and functions in __all__ are defined in bingx_async's own private modules
    (each lists them in its __all__), and report the package as their module."""
    private = [module for name, module in sys.modules.items() if name.startswith("bingx_async._")]
    for name in bingx_async.__all__:
        value = getattr(bingx_async, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == "bingx_async", name
            assert any(
                vars(module).get(name) is value and name in getattr(module, "__all__", ())
                for module in private
            ), name


def test_every_exception_is_exported() -> None:
    """Every exception class of the library is reachable from the package."""
    from bingx_async import _exceptions

    defined = {
        name
        for name, value in vars(_exceptions).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ in (_exceptions.__name__, "bingx_async")
    }
    assert defined <= set(bingx_async.__all__)


@pytest.mark.parametrize(
    "name",
    [
        name
        for name in bingx_async.__all__
        if inspect.isclass(getattr(bingx_async, name))
        and issubclass(getattr(bingx_async, name), BaseException)
    ],
)
def test_every_exception_is_a_bingx_error(name: str) -> None:
    """Every exported exception class derives from BingXError."""
    assert issubclass(getattr(bingx_async, name), BingXError)


def test_version_is_a_string() -> None:
    """__version__ is exported as the installed version string."""
    assert isinstance(bingx_async.__version__, str)
    assert bingx_async.__version__ == importlib.metadata.version("bingx-async")
