"""Built-in tools: one module per tool, discovered by ``mimic_learn.tools.registry.discover()``."""
