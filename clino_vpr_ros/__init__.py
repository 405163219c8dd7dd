"""clino_vpr_ros: learned loop closure for ROS 2 robots (CLINO-VPR gated encoder).

The core (everything outside ``clino_vpr_ros.ros``) never imports rclpy or ROS messages.
"""

__version__ = "0.1.0"
