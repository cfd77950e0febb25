"""Launching from Python (the README's first example of it)."""

from launch.run import Run, RunEnded

__all__ = ["Run", "RunEnded"]
