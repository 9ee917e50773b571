"""Sampling: the flow-matching schedule, samplers, and the streaming chunk generator."""
