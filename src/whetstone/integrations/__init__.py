"""Bridges to other frameworks (optional extras): ``lightning`` (a sharpening callback)."""
