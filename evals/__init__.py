"""Controller benchmark on measured outcomes (issue 19): a bank of replayable trainer states, every candidate
action rolled out over several data orders, and the scoring of a controller's committed decision.

    mimic-learn build-bank --tasks digits --resume          # (re)build evals/data/bank_v2.jsonl.gz
    mimic-learn eval-controller --controller rules --split dev
    mimic-learn eval-controller --bank situations --controller rules    # scenarios.py: the direction bank

``scenarios.py`` is the older hand-written bank ("does the choice point the right way"), its situations in
``data/scenarios.yaml``.

``evals`` sits above ``graphs`` (it drives the real graph) and below the CLI.
"""
