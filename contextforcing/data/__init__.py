"""Data: video files, datasets, and the synthetic world."""
