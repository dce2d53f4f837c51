"""Stage 3, a trial: orch's trainer, losses, optimisers and learning-rate schedules, the data a
trial trains on, the pre-sweep checks (``orch check``) and the learning-rate finder.
"""
