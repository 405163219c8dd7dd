"""clino_vpr_ros: learned loop closure for ROS 2 robots (CLINO-VPR gated encoder).

The core (everything outside ``clino_vpr_ros.ros``) never imports rclpy or ROS messages.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version number is in package.xml; setup.py copies it into the package metadata
    __version__ = version("clino_vpr_ros")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
