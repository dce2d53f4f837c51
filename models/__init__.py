"""PyTorch models, registered by name.

Add a model by dropping a module into this package that decorates a factory with
``@register("name")``. The factory is called as ``factory(n_inputs, n_outputs, **kwargs)``; its
keyword arguments are the model's hyperparameters (fixed in the config's ``model:`` section or
sampled by the search space).
"""
