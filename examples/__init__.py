"""Runnable programs: `python -m tinynorm.examples.<name>`."""
