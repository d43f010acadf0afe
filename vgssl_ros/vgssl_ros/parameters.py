"""What every vgssl node does the same way: declare its parameters, and spin until shut down.

Both nodes read their parameters once at start-up from a table ``{name: (default, description)}``
(the single source for the params files, the docs and the tests), so each is declared read-only:
a change at run time would silently not apply. A wrong type is a user error in a YAML file and
gets one line naming the parameter and the type it needs.
"""

from __future__ import annotations

from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from vgssl_core.errors import VgsslError

TYPE_NAMES = {str: "string", int: "integer", float: "double (write 1.0, not 1)", bool: "bool (true or false)"}


def declare_read_only(node: Node, table: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Declare every parameter of ``table`` on ``node``; their values (params file, -p, default)."""
    values = {}
    for name, (default, description) in table.items():
        descriptor = ParameterDescriptor(description=description, read_only=True)
        try:
            values[name] = node.declare_parameter(name, default, descriptor).value
        except ParameterException as err:
            raise VgsslError(f"parameter '{name}' must be a {TYPE_NAMES[type(default)]}: {err}") from None
    return values


def spin_until_shutdown(node: Node) -> None:
    """``rclpy.spin(node)`` until Ctrl-C / SIGTERM, which are a normal way to stop a node.

    rclpy's signal handler shuts the context down from another thread; if that lands while the
    executor builds its wait set, rclpy raises ``RCLError`` ("context is not valid") instead of
    ``ExternalShutdownException``. Once the context is down that is the same clean stop.
    """
    from rclpy._rclpy_pybind11 import RCLError

    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        if rclpy.ok(context=node.context):
            raise
