"""Observers of a pool built on its instruments: insights and the timeline."""
