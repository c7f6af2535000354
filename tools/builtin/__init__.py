"""Built-in tools, discovered by ``mimic_learn.tools.registry.discover()``: one module per tool, and
``set_knobs.py``, which makes the ``set_<name>`` tool of every entry of the knob table (training/knobs.py)."""
