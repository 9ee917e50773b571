"""Data: the synthetic worlds (`world/`: prompt grammars, simulation with per-frame ground truth, renderers,
datasets)."""
