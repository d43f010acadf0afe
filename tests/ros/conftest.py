"""Fixtures for ROS 2 tests that run real node processes and talk to them over real DDS.

Why this much machinery: DDS is a network protocol. Without care, a test's nodes would
hear another test run's nodes (or a robot's) on the same domain, multicast discovery
would leave the machine, logs would land in ``~/.ros``, a crashed node would keep
running after the test, and a message published before discovery finished would be
silently lost. So every test here gets:

- ``ros_domain``: a ``ROS_DOMAIN_ID`` of its own, held with a lock file so that parallel
  test runs on the machine never share one (1..100, skipping 40..60, which the project
  leaves to nodes people start by hand);
- ``ros_env``: the environment for node processes: that domain, discovery restricted to
  localhost, ``ROS_LOG_DIR`` under the test's tmp_path, the shipped Fast DDS profile;
- ``start_node``: starts ``python -m MODULE ... --ros-args ...`` with that environment,
  output to a log file whose tail is added to the report when the test fails, always
  stopped at teardown (SIGINT, then SIGKILL);
- ``ros_node``: an in-process rclpy node in a context of its own, with helpers that wait
  for publisher/subscriber matches, for N messages, and for service responses.

When rclpy, vgssl_msgs or vgssl_ros cannot be imported, every test module here is
reported as skipped with the reason (and how to fix it), so the core suite still runs.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FASTDDS_PROFILE = REPO / "config" / "fastdds_localhost.xml"

DOMAIN_IDS = [d for d in range(1, 101) if not 40 <= d <= 60]
DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / "vgssl-ros-test-domains"
DEFAULT_TIMEOUT = 20.0  # s; discovery takes 0-3 s, a loaded CI machine more
LOG_TAIL_LINES = 60


def _ros_unavailable_reason() -> str | None:
    """Why the ROS tests cannot run here, or None if they can."""
    setup_hint = "run: bash tools/ros_setup.sh .venv (or make setup)"
    try:
        import rclpy  # noqa: F401
    except Exception as err:  # ImportError, or a missing shared library (OSError)
        return f"rclpy cannot be imported ({type(err).__name__}: {err}); {setup_hint}"
    try:
        import vgssl_msgs.msg  # noqa: F401
        import vgssl_msgs.srv  # noqa: F401
    except Exception as err:
        return f"vgssl_msgs is not built into this environment ({type(err).__name__}: {err}); {setup_hint}"
    try:
        import vgssl_ros.ros_env  # noqa: F401
    except Exception as err:
        return f"vgssl_ros is not installed ({type(err).__name__}: {err}); {setup_hint}"
    return None


ROS_UNAVAILABLE = _ros_unavailable_reason()


if ROS_UNAVAILABLE is not None:

    class _SkippedRosTest(pytest.Item):
        def runtest(self) -> None:  # never runs: it carries a skip mark
            raise AssertionError("unreachable")

        def reportinfo(self):
            return self.path, 0, self.name

    class _SkippedRosModule(pytest.File):
        """Stands in for a test module that would fail to import without ROS."""

        def collect(self):
            item = _SkippedRosTest.from_parent(self, name="ros_tests")
            item.add_marker(pytest.mark.skip(reason=ROS_UNAVAILABLE))
            yield item

    def pytest_pycollect_makemodule(module_path: Path, parent):
        return _SkippedRosModule.from_parent(parent, path=module_path)


# --- domains and environment ---------------------------------------------------------------

_domain_counter = itertools.count()


def acquire_domain() -> tuple[int, int]:
    """``(domain_id, lock_fd)`` of a domain no other test process on this machine holds.

    The first candidate is derived from the pid and a counter, so parallel runs start at
    different places and consecutive tests of one run do not reuse the domain whose
    nodes were just stopped; the lock (released by closing ``lock_fd``) settles ties.
    """
    DOMAIN_LOCK_DIR.mkdir(exist_ok=True)
    start = (os.getpid() * 7 + next(_domain_counter)) % len(DOMAIN_IDS)
    for offset in range(len(DOMAIN_IDS)):
        domain = DOMAIN_IDS[(start + offset) % len(DOMAIN_IDS)]
        fd = os.open(DOMAIN_LOCK_DIR / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return domain, fd
    raise RuntimeError(f"all test ROS domains {DOMAIN_IDS[0]}..{DOMAIN_IDS[-1]} are held by other test runs")



def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def _ros_test_process_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Localhost discovery, the profile and a log folder for this pytest process itself.

    Fast DDS reads its profile when the process creates its first participant, and rcl
    configures logging once per process, so this must be in place before any test of
    the session creates an rclpy context; each context then picks its own domain.
    """
    from vgssl_ros.ros_env import localhost_env

    env = localhost_env(0, tmp_path_factory.mktemp("ros_log_pytest"), fastdds_profile=FASTDDS_PROFILE)
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ.keys() - env.keys():
            if name.startswith(("ROS_", "FASTDDS_", "FASTRTPS_")):
                patch.delenv(name)
        for name, value in env.items():
            if name.startswith(("ROS_", "FASTDDS_", "FASTRTPS_")) and name != "ROS_DOMAIN_ID":
                patch.setenv(name, value)
        yield


@pytest.fixture
def ros_domain() -> Iterator[int]:
    """A ROS_DOMAIN_ID held by this test alone (see :func:`acquire_domain`)."""
    domain, fd = acquire_domain()
    try:
        yield domain
    finally:
        os.close(fd)


@pytest.fixture
def ros_env(ros_domain: int, tmp_path: Path) -> dict[str, str]:
    """Environment for node processes of this test (bootstrapped LD_LIBRARY_PATH kept)."""
    from vgssl_ros.ros_env import localhost_env

    env = localhost_env(ros_domain, tmp_path / "ros_log", fastdds_profile=FASTDDS_PROFILE)
    env["PYTHONUNBUFFERED"] = "1"  # the log file shows what happened up to a failure
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


# --- node processes ------------------------------------------------------------------------


class NodeProcess:
    """A node running as a child process, with its combined stdout/stderr in a file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # A session of its own: SIGINT from the terminal does not reach it twice, and
        # stop() can signal everything the node started.
        self.popen = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
            # a test run started in the background by a non-interactive shell (CI) inherits SIGINT
            # ignored, and so would the node: give it the disposition a user's terminal gives it
            preexec_fn=_default_sigint,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_output(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until ``text`` appears in the node's output; fail early if it exits."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.is_running():
                raise AssertionError(
                    f"node {self.name} exited with {self.returncode} before printing {text!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.name} did not print {text!r} within {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the node to exit by itself; its return code."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node {self.name} still running after {timeout} s:\n{self.tail()}") from None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (a node's Ctrl-C path), then SIGKILL after ``timeout``; the return code."""
        if self.is_running():
            self._signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait()
        else:  # children it left behind, if any
            self._signal(signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def start_process(ros_env: dict[str, str], tmp_path: Path,
                  request: pytest.FixtureRequest) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: ``start_process(argv, name, env=None, cwd=None)``: any command (``ros2 launch``,
    ``launch_test``) as a :class:`NodeProcess` with :func:`ros_env` and ``env`` on top, output in
    ``tmp_path/NAME.log``; stopped at teardown, its output's tail in the report of a failed test.
    """
    started: list[NodeProcess] = request.node.stash.setdefault(_NODES_KEY, [])

    def start(argv: Sequence[str], name: str, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> NodeProcess:
        full_env = {**ros_env, **(env or {})}
        process = NodeProcess(name, [str(a) for a in argv], full_env, tmp_path / f"{name}.log", cwd=cwd or tmp_path)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def start_node(ros_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: ``start_node(module, *ros_args, args=(), name=None, env=None, pythonpath=())``.

    Runs ``python -m module *args --ros-args *ros_args`` (no ``--ros-args`` when there are
    none) with :func:`ros_env`, ``env`` on top, and ``pythonpath`` prepended to
    PYTHONPATH (for node modules a test writes into tmp_path). Every node is stopped at
    teardown; when the test fails, the tail of each node's output is in the report.
    """
    started: list[NodeProcess] = request.node.stash.setdefault(_NODES_KEY, [])
    counter = itertools.count()

    def start(
        module: str,
        *ros_args: str,
        args: Sequence[str] = (),
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[str | os.PathLike[str]] = (),
    ) -> NodeProcess:
        name = name or f"{module.rsplit('.', 1)[-1]}_{next(counter)}"
        argv = [sys.executable, "-m", module, *args]
        if ros_args:
            argv += ["--ros-args", *ros_args]
        full_env = dict(ros_env)
        full_env.update(env or {})
        if pythonpath:
            paths = [str(p) for p in pythonpath] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
            full_env["PYTHONPATH"] = os.pathsep.join(paths)
        process = NodeProcess(name, argv, full_env, tmp_path / f"{name}.log", cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


_NODES_KEY = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On failure, add the tail of every node process's output to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for process in item.stash.get(_NODES_KEY, []):
            state = "running" if process.is_running() else f"exited with {process.returncode}"
            report.sections.append(
                (f"node {process.name} ({state}), last {LOG_TAIL_LINES} lines of {process.log_path}", process.tail())
            )


# --- in-process node -----------------------------------------------------------------------


class RosTestNode:
    """An rclpy node in a context of its own, spun only while a helper waits.

    Helpers never publish blindly: DDS drops what is sent before discovery matched the
    two ends, so tests wait for a match (``wait_for_subscribers`` before publishing,
    ``wait_for_publishers`` before expecting messages, ``call`` waits for the service).
    """

    def __init__(self, domain_id: int, name: str = "vgssl_test"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(
        self, condition: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT,
        what: str | Callable[[], str] = "condition",
    ) -> None:
        """Spin this node until ``condition()`` holds; AssertionError after ``timeout`` s.

        ``what`` (a string, or a callable evaluated at the timeout) names what was awaited.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
            self.executor.spin_once(timeout_sec=0.02)

    def spin_for(self, seconds: float) -> None:
        """Spin for a while, e.g. to show that nothing more arrives."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def wait_for_subscribers(self, publisher: Any, count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.spin_until(
            lambda: publisher.get_subscription_count() >= count, timeout,
            f"{count} subscriber(s) on {publisher.topic_name}",
        )

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until this node's graph knows ``count`` publishers of ``topic``.

        Matching with this node's subscriptions completes in the same discovery exchange;
        for messages that must not be missed, also use reliable + transient-local QoS or
        let the publisher wait for its subscriber (``get_subscription_count``).
        """
        resolved = self.node.resolve_topic_name(topic)
        self.spin_until(lambda: self.node.count_publishers(resolved) >= count, timeout, f"{count} publisher(s) on {resolved}")

    def subscribe(self, msg_type: Any, topic: str, qos: Any = 10) -> list:
        """A list that fills with every message received on ``topic`` while this node spins."""
        inbox: list = []
        self.node.create_subscription(msg_type, topic, inbox.append, qos)
        return inbox

    def wait_for_messages(self, inbox: list, count: int, timeout: float = DEFAULT_TIMEOUT) -> list:
        """Spin until ``inbox`` (from :meth:`subscribe`) holds ``count`` messages; return it."""
        self.spin_until(lambda: len(inbox) >= count, timeout, lambda: f"{count} message(s), got {len(inbox)}")
        return inbox

    def publish_when_matched(self, publisher: Any, msg: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_for_subscribers(publisher, 1, timeout)
        publisher.publish(msg)

    def call(self, srv_type: Any, service: str, request: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Call ``service`` once it is available; its response (AssertionError on timeout)."""
        client = self.node.create_client(srv_type, service)
        try:
            self.spin_until(client.service_is_ready, timeout, f"service {service}")
            future = client.call_async(request)
            self.spin_until(future.done, timeout, f"a response from {service}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def ros_node(ros_domain: int) -> Iterator[RosTestNode]:
    """An in-process rclpy node on this test's domain, shut down at teardown."""
    node = RosTestNode(ros_domain)
    try:
        yield node
    finally:
        node.close()
