"""vgssl_core: ROS-free self-supervised visual geo-localization (data, GeoPairs, models, methods, evaluation)."""

__version__ = "0.1.0"
