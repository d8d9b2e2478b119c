"""The example configs shipped with the package, found the same way in a checkout and a wheel.

``configs/`` sits beside ``core/`` in the source tree and, installed as package data, in
``site-packages``. ``--config configs/<domain>/<job>.yaml`` therefore works from any folder
after a plain ``pip install``: a path that does not exist is looked up among the shipped ones.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


def shipped_config(name: str | Path) -> Path:
    """The shipped config ``<domain>/<job>.yaml`` (a leading ``configs/`` is allowed)."""
    parts = Path(name).parts
    if parts[:1] == ("configs",):
        parts = parts[1:]
    return CONFIG_ROOT.joinpath(*parts)


def resolve_config_args(args: list[str]) -> list[str]:
    """``--config``/``-c`` values that name no file here but a shipped config, made absolute."""
    out = list(args)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag not in ("--config", "-c"):
            continue
        if not eq:
            if i + 1 >= len(out):
                break
            value = out[i + 1]
        if Path(value).exists() or not value.endswith((".yaml", ".yml")):
            continue
        shipped = shipped_config(value)
        if shipped.is_file():
            if eq:
                out[i] = f"{flag}={shipped}"
            else:
                out[i + 1] = str(shipped)
    return out
