"""Rendering a compare folder's results: HTML with inline charts, Markdown and CSV."""
