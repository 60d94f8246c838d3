"""Running an experiment: its file (arms x budgets x seeds), the grid of cells, one cell."""
