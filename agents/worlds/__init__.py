"""Task worlds: prompt generators with exact checkers, written judgments and programmatic mutators."""
