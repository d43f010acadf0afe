"""The launch_testing files here are run by ``launch_test`` (tests/ros/test_launch.py does, in a ROS
domain it holds), not collected by pytest: launch_testing's own pytest plugin does not load with
the pytest of this venv, and each file needs a process of its own (it sets the environment of its
ROS domain before rclpy starts).
"""

collect_ignore_glob = ["test_*.py"]
