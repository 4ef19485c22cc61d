"""Simulated robots (MuJoCo, no ROS): the ALOHA bimanual ViperX scenes of gym-aloha."""
