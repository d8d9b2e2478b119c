"""The ``convnext-domains`` command: dispatch before importing anything heavy.

``export``, ``predict --bundle``, ``bundle verify`` and ``new-domain`` have their own parsers;
``predict --bundle`` and ``bundle verify`` must run where torch is not installed, so this module
imports nothing from the training stack.
Everything else (fit, validate, test, predict with a config) goes to the LightningCLI. Errors in
the user's data, weights or settings end as one ``error:`` line; ``--verbose`` (or
``CONVNEXT_DOMAINS_VERBOSE=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

VERBOSE_FLAGS = ("--verbose", "-v")

USAGE = """\
usage: convnext-domains COMMAND [options]

Fine-tune and run ConvNeXt models on medical, agricultural and manufacturing images.

training and evaluation (LightningCLI; `convnext-domains COMMAND --help` lists every option):
  fit        --config CONFIG.yaml [--ckpt_path last.ckpt to resume]   train
  validate   --config CONFIG.yaml --ckpt_path CKPT                    metrics on the validation split
  test       --config CONFIG.yaml --ckpt_path CKPT                    metrics and report on the test split
  predict    --config CONFIG.yaml --ckpt_path CKPT                    predictions with the training stack
  pretrain   --config CONFIG.yaml                                     FCMAE self-supervised; weights for `pretrained: PATH`

bundles (a trained model another team runs without our training code):
  export --ckpt CKPT --out DIR                 checkpoint -> ONNX bundle (`export --help`)
  predict --bundle DIR INPUT... --out OUT      run a bundle, no torch needed (`predict --bundle X --help`)
  bundle verify DIR                            check a bundle's metadata against its schema and hashes

domains:
  new-domain NAME --from DOMAIN [--into DIR] [--dry-run]   clone a domain into a new, tested one

options for every command:
  --verbose, -v   show the full traceback of an error instead of one `error:` line
  -h, --help      this overview (or a command's own options after the command)
"""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or settings, not a bug: printed as one line."""
    from core.errors import UserError

    return (UserError, FloatingPointError)


def _dispatch(args: list[str], from_argv: bool) -> None:
    if args[:1] == ["export"]:
        from core.export import main as export_main

        export_main(args[1:])
    elif args[:1] == ["new-domain"]:
        from core.new_domain import main as new_domain_main

        new_domain_main(args[1:])
    elif args[:1] == ["bundle"]:  # torch-free, like predict --bundle
        from core.bundle_verify import main as bundle_main

        bundle_main(args[1:])
    elif args[:1] == ["predict"] and any(a == "--bundle" or a.startswith("--bundle=") for a in args):
        from core.predict_bundle import main as predict_main

        predict_main(args[1:])
    else:
        from core.cli import run_cli
        from core.configs import resolve_config_args

        if args[:1] == ["pretrain"]:  # a fit whose model is the FCMAE task of the config
            args = ["fit", *args[1:]]
        args = resolve_config_args(args)
        if from_argv:  # LightningCLI reads sys.argv itself (its usage line shows the program)
            sys.argv[1:] = args
        run_cli(None if from_argv else args)


def main(argv: Sequence[str] | None = None) -> None:
    raw = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE_FLAGS for a in raw) or os.environ.get(
        "CONVNEXT_DOMAINS_VERBOSE", "").strip().lower() in {"1", "true", "yes"}
    args = [a for a in raw if a not in VERBOSE_FLAGS]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        raise SystemExit(0 if args else 2)
    try:
        _dispatch(args, from_argv=argv is None)
    except Exception as err:
        found = _find_user_error(err)
        if found is None or verbose:
            raise
        print(f"error: {found}", file=sys.stderr)
        print("(run again with --verbose for the full traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _find_user_error(err: BaseException) -> BaseException | None:
    """Our user error behind ``err``: jsonargparse re-raises errors from building the model or
    datamodule (e.g. missing weights) as its own ValueError, chained or only quoted."""
    from core.errors import UserError

    kinds, seen = _user_errors(), set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    last = UserError.last
    return last if last is not None and str(last) and str(last) in str(err) else None


if __name__ == "__main__":
    main()
