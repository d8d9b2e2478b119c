"""Packaging: declared floors are the ones `make test-min` installs; the wheel carries the configs."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
# Extras `make test-min` installs; demo (a data set) and medical-gpl (GPL decoder) are not.
TESTED_EXTRAS = ("medical", "agriculture", "export", "detection", "dev")
LOCAL_PAIR = {"torch", "torchvision"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _declared_floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in TESTED_EXTRAS:
        specs += project["optional-dependencies"][extra]
    floors = {}
    for text in specs:
        req = Requirement(text)
        if req.name == "convnext-domains" or _norm(req.name) in LOCAL_PAIR:
            continue
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{text}: declare exactly one floor (>=)"
        floors[_norm(req.name)] = lower[0]
    return floors


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "tests" / "constraints-min.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_norm(name)] = version
    return pins


def test_min_constraints_pin_every_declared_floor():
    assert _constraints() == _declared_floors()


def test_license_is_an_spdx_string():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_plain_install_runs_the_cli_with_the_shipped_configs(tmp_path):
    # A non-editable install (a wheel, no source tree): configs used to be found only in the
    # checkout. The wheel goes into a folder put first on PYTHONPATH; cwd is outside the repo.
    import os
    import subprocess
    import sys

    from .conftest import TINY_ARGS, make_defect_folders

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(wheels)], check=True, timeout=600, capture_output=True)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    *map(str, wheels.glob("*.whl"))], check=True, timeout=600, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import core.configs as c, domains.manufacturing.demo as d; "
         "print(c.CONFIG_ROOT); print(d.CONFIG.is_file())"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    root, demo_config = where.stdout.split()
    assert Path(root) == site / "configs" and demo_config == "True"
    data = make_defect_folders(tmp_path / "defects", per_class=4)
    fit = subprocess.run(
        [sys.executable, "-m", "core.entry", "fit", "--config", "configs/manufacturing/folder.yaml",
         *TINY_ARGS, f"--data.init_args.root={data}", "--data.init_args.image_size=32",
         "--data.init_args.num_workers=0", "--trainer.fast_dev_run=true"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
