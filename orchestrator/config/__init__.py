"""Stage 1, the config: the typed schema (one declaration per hyperparameter), YAML loading
with base configs and overrides, the value checks and their one-line errors, the model registry.
"""
