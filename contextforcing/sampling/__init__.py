"""Sampling: the one chunk loop (`generation`), the streaming engine it drives (`stream`), prompt switches
(`switches`), the flow-matching schedule and the samplers."""
