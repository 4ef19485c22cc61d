"""pyrealsense2 helpers for the camera node: frame sources and timestamp mapping (no ROS)."""
