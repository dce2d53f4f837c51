"""PyTorch models shipped with orch, registered by name (``model.name``).

Add one by dropping a module into this package that decorates a factory with
``@register("name")`` (``orchestrator.config.models``). The factory declares what it needs to size
itself among ``input_shape``, ``n_inputs``, ``n_outputs`` and ``task`` (orch fills those in from
the data); its other keyword arguments are the model's hyperparameters (fixed in the config's
``model:`` section or sampled by the search space). A model of your own project needs no
registration: name its factory by import path (``model.factory: "mypkg.nets:build"``).
"""
