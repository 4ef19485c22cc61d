"""Demonstration datasets: the episode format, its reader, and the scripted recorder.

``episodes`` needs only numpy and h5py (no torch, no rclpy); ``scripted`` and ``record`` need
MuJoCo and gym-aloha's scenes.
"""
