"""MIMIC-Learn: an LLM agent steers a paused PyTorch trainer at every epoch boundary.

Layers (dependencies point one way): ``training`` <- ``tools`` <- ``agents``/``graphs`` <- ``cli``.
"""

__version__ = "0.1.0"
