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

from vgssl_ros import bag_replay
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


def test_there_are_the_launch_files_and_a_parameter_file_for_each_node():
    assert {REPO / "launch" / "localize.launch.py", REPO / "launch" / "replay.launch.py"} <= set(LAUNCH_FILES)
    assert {REPO / "config" / "localizer.yaml", REPO / "config" / "bag_replay.yaml"} <= set(PARAM_FILES)


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

    started = {first_string(node, "name") for node in nodes}  # with the nodes of the launch files it includes
    for other in LAUNCH_FILES:
        if other != path and other.name in ast.unparse(tree):
            started |= {first_string(n, "name") for n in calls(ast.parse(other.read_text()), "Node")}
    yaml_names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and n.value.endswith((".yaml", ".yml"))}
    for name in yaml_names:  # installed from config/ into share/vgssl_ros/config (setup.py)
        params = REPO / "config" / name
        assert params.is_file(), f"{path.name} names {name}, which is not in config/"
        files_nodes = set(ros_parameters(params))
        assert files_nodes & started or "/**" in files_nodes, f"{name} has no section for a node of {sorted(started)}"


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


def declared_arguments(tree: ast.AST) -> dict[str, ast.Call]:
    return {first_string(c, "name"): c for c in calls(tree, "DeclareLaunchArgument")}


def test_replay_launch_starts_the_live_replay_and_includes_the_localizer_launch():
    tree = ast.parse((REPO / "launch" / "replay.launch.py").read_text())
    declared = declared_arguments(tree)
    assert {"bag", "image_topic", "rate", "use_sim_time"} <= set(declared)
    assert keyword(declared["bag"], "default_value") is None  # required: no silent default
    (include,) = calls(tree, "IncludeLaunchDescription")  # the localizer, started as localize.launch.py does
    assert "localize.launch.py" in ast.unparse(include) and (REPO / "launch" / "localize.launch.py").is_file()
    localize_args = declared_arguments(ast.parse((REPO / "launch" / "localize.launch.py").read_text()))
    # launch fills an included file's arguments only from the include's launch_arguments: every
    # required one must be there, as a pair (its name, a LaunchConfiguration declared here).
    pairs = keyword(include, "launch_arguments")
    assert isinstance(pairs, ast.List) and all(isinstance(p, ast.Tuple) and len(p.elts) == 2 for p in pairs.elts)
    forwarded = {ast.literal_eval(name): first_string(value, "variable_name") for name, value in
                 (p.elts for p in pairs.elts)}
    required = {name for name, c in localize_args.items() if keyword(c, "default_value") is None}
    assert {"checkpoint", "database"} <= required <= set(forwarded) <= set(localize_args)
    assert set(forwarded.values()) <= set(declared)
    assert keyword(declared["checkpoint"], "default_value") is None  # required here as well
    assert keyword(declared["database"], "default_value") is None
    (node,) = calls(tree, "Node")
    assert first_string(node, "name") == bag_replay.NODE_NAME  # the key of config/bag_replay.yaml
    overrides = next(d for d in ast.walk(keyword(node, "parameters")) if isinstance(d, ast.Dict))
    fixed = {k.value: v.value for k, v in zip(overrides.keys, overrides.values) if isinstance(v, ast.Constant)}
    assert fixed["mode"] == "live" and fixed["wait_for_subscribers"] >= 1  # the localizer hears the first frame
    assert {k.value for k in overrides.keys} <= set(bag_replay.PARAMETERS)  # no misspelt override


@pytest.mark.parametrize("name, parameters", [(NODE_NAME, PARAMETERS), (bag_replay.NODE_NAME, bag_replay.PARAMETERS)],
                         ids=[NODE_NAME, bag_replay.NODE_NAME])
def test_parameter_file_sets_every_node_parameter_with_its_type(name, parameters):
    """A misspelt key would be ignored by the node, a wrong type would stop it: catch both here."""
    values = ros_parameters(REPO / "config" / f"{name}.yaml")[name]
    assert set(values) == set(parameters), (
        f"unknown: {sorted(set(values) - set(parameters))}, missing: {sorted(set(parameters) - set(values))}"
    )
    for key, (default, _) in parameters.items():
        assert type(values[key]) is type(default), f"{key}: {values[key]!r} is not a {type(default).__name__}"
