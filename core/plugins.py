"""Domain plug-ins: what a domain package contributes beyond its datamodules and tasks.

A domain declares itself in one place, the ``PLUGIN`` object of its ``plugin`` module
(``domains/medical/plugin.py`` -> ``domains.medical.plugin:PLUGIN``): the pip extra its code
needs, its input readers for bundles, its model-card section and its test modules. core finds
the plug-in of a task or reader from its dotted path (the nearest package above it that has a
``plugin`` module), so core never names a domain. The ``plugin`` module must import without
torch or the domain's extra, so that a missing extra can still be named.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from core.readers import InputReader

PLUGIN_MODULE = "plugin"
PLUGIN_ATTRIBUTE = "PLUGIN"


@dataclass(frozen=True)
class DomainPlugin:
    """One domain's contributions (see the module docstring for where it is declared)."""

    name: str
    """The domain's name, as in ``domains/<name>/`` and ``configs/<name>/``."""
    extra: str | None = None
    """The convnext-domains pip extra its tasks and readers need (None: the base install)."""
    readers: tuple[InputReader, ...] = ()
    """The input readers it provides for bundles."""
    card_limitations: tuple[str, ...] = ()
    """Lines for the ``Limitations`` section of its models' cards (markdown list items)."""
    tests: tuple[str, ...] = ()
    """Its test modules, as paths under the project's ``tests/`` folder: ``new-domain`` copies
    them with the domain (shared helpers such as ``conftest.py`` stay shared)."""

    def __post_init__(self) -> None:
        for test in self.tests:
            if not test.endswith(".py") or test.startswith("/") or ".." in test.split("/"):
                raise ValueError(f"domain plug-in '{self.name}' lists test '{test}'; give a .py "
                                 "path relative to tests/, such as 'test_retail.py'")
        for reader in self.readers:
            if reader.extra not in (None, self.extra):
                raise ValueError(f"domain plug-in '{self.name}' needs extra {self.extra}, but its "
                                 f"reader '{reader.name}' names extra {reader.extra}")

    def install_hint(self) -> str:
        """The pip command that installs what this domain's code needs."""
        return (f"pip install 'convnext-domains[{self.extra}]'" if self.extra
                else "pip install convnext-domains")


def plugin_of(dotted: str) -> DomainPlugin | None:
    """The plug-in of the nearest package above ``dotted`` (``pkg.module.Class`` or
    ``pkg.module:OBJECT``) that has a ``plugin`` module, or None (core's own classes, or a
    package without one)."""
    module = dotted.partition(":")[0] if ":" in dotted else dotted.rpartition(".")[0]
    parts = module.split(".")
    try:
        # find_spec imports the packages above a module, never the module itself (which may
        # need torch, or the very extra that is missing).
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    is_package = spec is not None and spec.submodule_search_locations is not None
    for end in range(len(parts) if is_package else len(parts) - 1, 0, -1):
        name = ".".join([*parts[:end], PLUGIN_MODULE])
        try:
            if importlib.util.find_spec(name) is None:
                continue
            plugin = getattr(importlib.import_module(name), PLUGIN_ATTRIBUTE, None)
        except ImportError:
            # A plug-in module that does not import (its extra is missing) offers nothing;
            # a package further up may still have one.
            continue
        if isinstance(plugin, DomainPlugin):
            return plugin
    return None
