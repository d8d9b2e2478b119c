"""The ``convnext-domains`` command: dispatch before importing anything heavy.

``export`` and ``predict --bundle`` have their own parsers; ``predict --bundle`` must run where
torch is not installed, so this module imports nothing from the training stack. Everything
else (fit, validate, test, predict with a config) goes to the LightningCLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["export"]:
        from core.export import main as export_main

        export_main(args[1:])
    elif args[:1] == ["predict"] and any(a == "--bundle" or a.startswith("--bundle=") for a in args):
        from core.predict_bundle import main as predict_main

        predict_main(args[1:])
    else:
        from core.cli import run_cli

        run_cli(None if argv is None else args)


if __name__ == "__main__":
    main()
