"""contextforcing: streaming long video generation with a three-tier context memory (Context Forcing)."""

__version__ = "0.1.0"
