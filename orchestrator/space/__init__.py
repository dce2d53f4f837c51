"""Stage 2, the search space: distributions (one class each), knobs, tiers, conditions,
coarse-to-fine zoom, and the check of a space against its config.
"""
