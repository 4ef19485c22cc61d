"""Evaluation of bundles: statistics (:mod:`.metrics`), the ROS 2 closed loop
(:mod:`.ros_runner`), router-vs-phase analysis (:mod:`.phases`), figures and the demo video
(:mod:`.figures`, :mod:`.video`). Nothing here imports rclpy or torch at module level."""
