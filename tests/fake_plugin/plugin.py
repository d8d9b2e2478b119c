"""The fake domain's one place: its reader and its model-card section."""

from __future__ import annotations

from core.plugins import DomainPlugin
from tests.fake_plugin.reader import NPY

LIMITATION = "- Fake plug-in: trained on random arrays, for tests only."

PLUGIN = DomainPlugin(name="fake_plugin", readers=(NPY,), card_limitations=(LIMITATION,))
