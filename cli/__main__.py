"""``python -m mimic_learn.cli`` runs the ``mimic-learn`` command line."""

from . import app

app()
