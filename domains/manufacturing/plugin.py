"""What the manufacturing domain contributes to core: nothing beyond its datamodules and tasks.

Its bundles read ordinary image files with core's image reader and need no extra package, so
its plug-in only names the domain and its tests; a domain cloned from it declares its own
reader here.
"""

from __future__ import annotations

from core.plugins import DomainPlugin

PLUGIN = DomainPlugin(name="manufacturing",
                      tests=("test_folder_data.py", "test_manufacturing_configs.py",
                             "test_manufacturing_detection.py"))
