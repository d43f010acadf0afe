"""Inspect (and repair) a venv for tools/ros_setup.sh; prints one state word a line.

Run with the venv's own python: ``VENV/bin/python tools/ros_venv_check.py REPO VENV``.
Lines printed:

- ``site PATH``: the venv's site-packages folder (always, first).
- ``missing-requirements``: a line of requirements-ros.txt is not satisfied.
- ``missing-numpy``: numpy is not importable (rosidl's Python generator needs its headers).
- ``fixed-cmake N``: N CMake export files had build-container paths rewritten.
- ``missing-vgssl-ros``: vgssl_ros is not installed editable from this checkout.

Why the CMake rewrite: the ROS wheels were built in a manylinux container, and their
CMake export files still name that container's Python and numpy include folders
(``/opt/python/cp311-cp311/...``). CMake refuses imported targets whose include folders
do not exist, so building any interface package against them fails until those paths
name this venv's real ones. It has to be redone after every install of ``ros-*`` wheels,
which is why it runs on every setup (it only writes files that still need it).
"""

from __future__ import annotations

import json
import re
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors packaging; a bare venv may have only that one
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

PYTHON_INCLUDE_RE = re.compile(r"/[^;\"\s]*/include/python3\.\d+t?(?=[;\"\s/]|$)")
NUMPY_INCLUDE_RE = re.compile(r"/[^;\"\s]*/site-packages/numpy/(?:_core|core)/include(?=[;\"\s/]|$)")


def unsatisfied_requirements(requirements_file: Path) -> list[str]:
    """Requirement lines whose distribution is absent or at a version outside the spec."""
    missing = []
    for raw in requirements_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def fix_cmake_paths(share: Path, python_include: str, numpy_include: str | None) -> int:
    """Rewrite non-existent Python/numpy include folders in ``share/**/*.cmake``; count files."""

    def replacer(real: str | None):
        def sub(match: re.Match[str]) -> str:
            path = match.group(0)
            if real is None or path == real or Path(path).is_dir():
                return path
            return real

        return sub

    changed = 0
    for cmake_file in share.rglob("*.cmake"):
        try:
            text = cmake_file.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if "/include/python3." not in text and "numpy/" not in text:
            continue
        new = PYTHON_INCLUDE_RE.sub(replacer(python_include), text)
        new = NUMPY_INCLUDE_RE.sub(replacer(numpy_include), new)
        if new != text:
            cmake_file.write_text(new)
            changed += 1
    return changed


def vgssl_ros_is_editable_from(package_dir: Path) -> bool:
    """True if the installed vgssl-ros is an editable install of this checkout's folder."""
    try:
        dist = metadata.distribution("vgssl-ros")
    except metadata.PackageNotFoundError:
        return False
    raw = dist.read_text("direct_url.json")
    if not raw:
        return False
    info = json.loads(raw)
    url = info.get("url", "")
    editable = info.get("dir_info", {}).get("editable", False)
    return bool(editable) and url.removeprefix("file://").rstrip("/") == str(package_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: ros_venv_check.py REPO VENV", file=sys.stderr)
        return 2
    repo, venv = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    print(f"site {sysconfig.get_paths()['purelib']}")

    if unsatisfied_requirements(repo / "requirements-ros.txt"):
        print("missing-requirements")
        return 0  # the CMake files get fixed on the next run, after the install

    try:
        import numpy

        numpy_include: str | None = numpy.get_include()
    except ImportError:
        numpy_include = None
        print("missing-numpy")

    changed = fix_cmake_paths(venv / "share", sysconfig.get_paths()["include"], numpy_include)
    if changed:
        print(f"fixed-cmake {changed}")

    if not vgssl_ros_is_editable_from(repo / "vgssl_ros"):
        print("missing-vgssl-ros")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
