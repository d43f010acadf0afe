"""Launch files and ROS parameter files, checked statically (``launch`` cannot run here).

``ros2 launch`` is not available in this environment (shared/ROS2.md), so a launch file that
names a missing executable or parameter file, or uses an undeclared argument, would only fail
on the robot. These tests read every ``launch/*.launch.py`` with ``ast`` and check what it names
against the package: executables against ``vgssl_ros/setup.py``'s entry points, parameter files
against ``config/``, launch configurations against declared arguments; and every parameter file
against the parameters the node declares. tests/ros/launch/ runs them for real where ROS is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from vgssl_ros.localizer import NODE_NAME, PARAMETERS

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PARAM_FILES = sorted(p for p in (REPO / "config").glob("*.yaml")
                     if "ros__parameters" in p.read_text())


def entry_points() -> dict[str, str]:
    """console_scripts of vgssl_ros/setup.py: executable name -> "module:function"."""
    tree = ast.parse((REPO / "vgssl_ros" / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    specs = [ast.literal_eval(item) for item in value.elts]
                    return {name.strip(): target.strip() for name, target in (s.split("=", 1) for s in specs)}
    raise AssertionError("vgssl_ros/setup.py declares no console_scripts")


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of ``name(...)`` or ``x.name(...)``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called == name:
                found.append(node)
    return found


def first_string(call: ast.Call, keyword: str) -> str | None:
    """The call's first positional argument or ``keyword=`` as a string constant, else None."""
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value.value if isinstance(kw.value, ast.Constant) else None
    if call.args and isinstance(call.args[0], ast.Constant):
        return call.args[0].value
    return None


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def ros_parameters(path: Path) -> dict[str, dict]:
    """node name -> ros__parameters of a parameter file (which must parse with safe_load)."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: not a mapping of node names"
    out = {}
    for node, body in data.items():
        assert isinstance(body, dict) and isinstance(body.get("ros__parameters"), dict), \
            f"{path.name}: '{node}' must hold a 'ros__parameters' mapping"
        out[node] = body["ros__parameters"]
    return out


def test_there_is_a_launch_file_and_a_localizer_parameter_file():
    assert (REPO / "launch" / "localize.launch.py") in LAUNCH_FILES
    assert (REPO / "config" / "localizer.yaml") in PARAM_FILES


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_things_that_exist(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    scripts = entry_points()
    nodes = calls(tree, "Node")
    assert nodes, f"{path.name} starts no Node"
    for node in nodes:
        package, executable = first_string(node, "package"), first_string(node, "executable")
        assert package == "vgssl_ros", f"{path.name}: Node(package={package!r})"
        assert executable in scripts, f"{path.name}: executable {executable!r} is not an entry point: {sorted(scripts)}"
        module, function = scripts[executable].split(":")
        source = REPO / "vgssl_ros" / Path(*module.split(".")).with_suffix(".py")
        assert source.is_file(), f"entry point {executable} -> {module}, but {source} does not exist"
        assert any(isinstance(n, ast.FunctionDef) and n.name == function for n in ast.parse(source.read_text()).body)

    declared = {first_string(c, "name") for c in calls(tree, "DeclareLaunchArgument")}
    used = {first_string(c, "variable_name") for c in calls(tree, "LaunchConfiguration")}
    assert None not in declared | used, f"{path.name}: argument names must be string literals"
    assert used <= declared, f"{path.name} uses undeclared arguments {sorted(used - declared)}"

    yaml_names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and n.value.endswith((".yaml", ".yml"))}
    for name in yaml_names:  # installed from config/ into share/vgssl_ros/config (setup.py)
        params = REPO / "config" / name
        assert params.is_file(), f"{path.name} names {name}, which is not in config/"
        files_nodes = ros_parameters(params)
        for node in nodes:
            node_name = first_string(node, "name")
            assert node_name in files_nodes or "/**" in files_nodes, f"{name} has no section for node {node_name}"


def test_localize_launch_declares_the_documented_arguments():
    tree = ast.parse((REPO / "launch" / "localize.launch.py").read_text())
    declared = {first_string(c, "name"): c for c in calls(tree, "DeclareLaunchArgument")}
    assert {"checkpoint", "database", "image_topic", "params_file", "use_sim_time", "fastdds_profile"} <= set(declared)
    assert keyword(declared["checkpoint"], "default_value") is None  # required: no silent default
    assert keyword(declared["database"], "default_value") is None
    assert ast.literal_eval(keyword(declared["fastdds_profile"], "default_value")) == ""  # the robot's own wins
    assert "get_package_share_directory" in ast.unparse(tree)  # params_file defaults to the installed one
    (node,) = calls(tree, "Node")
    assert first_string(node, "name") == NODE_NAME  # the key of config/localizer.yaml


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_parameter_files_parse(path):
    assert ros_parameters(path)


def test_localizer_yaml_sets_every_node_parameter_with_its_type():
    """A misspelt key would be ignored by the node, a wrong type would stop it: catch both here."""
    values = ros_parameters(REPO / "config" / "localizer.yaml")[NODE_NAME]
    assert set(values) == set(PARAMETERS), (
        f"unknown: {sorted(set(values) - set(PARAMETERS))}, missing: {sorted(set(PARAMETERS) - set(values))}"
    )
    for name, (default, _) in PARAMETERS.items():
        assert type(values[name]) is type(default), f"{name}: {values[name]!r} is not a {type(default).__name__}"
