"""Analysing finished cells: reading their results, tuning choices and statistics."""
