"""Thin ROS 2 adapter over the ROS-free core (the only place rclpy and *_msgs are imported)."""
