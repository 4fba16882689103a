"""The distribution maps component folders into one `kvferry` namespace, in a wheel too."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = (
    "import operator, sysconfig, kvferry.services.engine, kvferry.kernels;"
    "assert operator.__file__.startswith(sysconfig.get_paths()['stdlib']), operator.__file__;"
    "import kvferry; assert kvferry.__file__, 'kvferry resolved as a namespace package';"
    "import importlib.util as u;"
    "assert u.find_spec('services') is None, 'services is importable top-level';"
    "print(kvferry.services.engine.__file__)"
)


def test_editable_install_maps_components(tmp_path: Path) -> None:
    # Run outside the repository so the working directory cannot leak onto sys.path.
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("services/engine/__init__.py")


def test_built_wheel_imports_engine_and_no_top_level_operator(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("kvferry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kvferry/services/engine/scheduler.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"kvferry", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, cwd=tmp_path
    )
    out = subprocess.run([str(py), "-c", CHECK], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(env_dir) in out.stdout


def test_repo_root_on_sys_path_does_not_shadow_stdlib_operator() -> None:
    # `python -S -c` from the root puts the root first on sys.path before anything imports
    # `operator` (what `python -m pip` does in a fresh venv): the stdlib module must win.
    assert not (ROOT / "operator" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import operator; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(ROOT))
