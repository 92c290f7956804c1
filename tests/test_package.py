"""The package as a user installs it: a wheel that holds every module of the source tree, whose
`growlength` command and integrations import from the wheel alone, with no source checkout in reach."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_wheel_holds_every_module_and_runs_without_the_checkout(tmp_path):
    # built from a copy of what the wheel is made of: the checkout's growlength.egg-info (left by the
    # editable install) lists every file and would hide a package the build config leaves out
    source = tmp_path / "source"
    shutil.copytree(ROOT / "growlength", source / "growlength", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("growlength-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "growlength").rglob("*.py")}
    assert "growlength/integrations/hf_trainer.py" in modules and len(modules) > 25
    assert not modules - in_wheel, sorted(modules - in_wheel)
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    # python -S: no site-packages and no .pth files, so the editable install of this checkout is out of
    # reach; the dependencies come from the test's own site-packages, the package from the wheel alone
    env = {"PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    check = "import growlength, growlength.integrations.hf_trainer as hf; print(growlength.__file__, hf.__name__)"
    imported = subprocess.run(
        [sys.executable, "-S", "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.startswith(str(site / "growlength" / "__init__.py"))
    command = subprocess.run(
        [sys.executable, "-S", site / "bin" / "growlength", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert command.returncode == 0, command.stderr[-2000:]
    assert "--loss-chunk-tokens" in command.stdout
