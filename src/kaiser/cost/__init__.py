"""Pricing isolation: cycle costs, workloads and the replay engine (issue 4)."""
