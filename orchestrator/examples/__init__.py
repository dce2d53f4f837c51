"""Worked examples of the trial contract: a data factory (digits images) and a hand-written training loop."""
