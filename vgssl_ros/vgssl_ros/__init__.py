"""vgssl_ros: ROS 2 nodes that wrap vgssl_core (live localizer, rosbag2 replay benchmark).

Everything that is not ROS plumbing (decoding, descriptors, search, fix estimation,
recall) lives in vgssl_core and is tested there; the modules here only wire it to
topics, services and parameters.
"""

__version__ = "0.1.0"
