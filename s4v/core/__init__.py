"""Foundations every layer uses and that use nothing of s4v: user errors, the model enumerations, progress
output and stop signals."""
