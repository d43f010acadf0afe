"""ament_python package of the vgssl ROS 2 nodes.

Works three ways: ``colcon build`` (with or without ``--symlink-install``) in a ROS 2
workspace, ``pip install -e vgssl_ros`` in the project venv, and a plain wheel build.
The launch files and parameter files live in the repository's top-level ``launch/`` and
``config/`` folders (they are shared with the core's training presets); they are
installed into ``share/vgssl_ros`` from there, named by paths relative to this folder
because colcon requires relative ``data_files`` sources. (With ``--symlink-install``,
colcon mirrors them as ``build/launch`` and ``build/config`` links next to the package's
build folder, and the installed files link through those to the checkout.)

setuptools' editable installs (``pip install -e``) skip ``data_files``;
tools/ros_setup.sh links ``share/vgssl_ros`` of the venv to the checkout instead.
"""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "vgssl_ros"

# The real folder of this file: colcon --symlink-install runs a symlink of setup.py from
# its build folder, and the globs below must look at the checkout.
HERE = os.path.dirname(os.path.realpath(__file__))


def repo_files(*patterns: str) -> list[str]:
    """Files of the repository matching ``patterns``, as paths relative to this folder."""
    found = set()
    for pattern in patterns:
        found.update(glob(os.path.join(HERE, pattern)))
    return sorted(os.path.relpath(path, HERE) for path in found if os.path.isfile(path))


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(where=HERE, exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", repo_files("../launch/*.launch.py")),
        (
            "share/" + package_name + "/config",
            repo_files("../config/*.yaml", "../config/*.yml", "../config/*.xml"),
        ),
    ],
    # vgssl_core, rclpy and the message packages come from the environment (the venv or
    # a ROS install plus `pip install vgssl_core`), not from pip resolution here.
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vgssl maintainers",
    maintainer_email="vgssl@example.com",
    description="ROS 2 nodes of vgssl: live visual geo-localization and rosbag2 replay benchmark",
    license="MIT",
    entry_points={
        "console_scripts": [
            "localizer = vgssl_ros.localizer:main",
            "bag_replay = vgssl_ros.bag_replay:main",
        ],
    },
)
