"""Compare methods over a grid of arms, budgets and seeds, judged fairly, in one report."""
