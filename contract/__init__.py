"""The contract between the stages: what training/, build/, the served models and clients/ agree on.

Every stage imports this package; it imports none of them, and never torch, so a client installs
without torch and a Triton version folder can carry a copy of it beside model.py.

    errors.py   UserError: the base of every error that is the user's input, not a bug
    files.py    atomic file and folder writes, sha256
    metrics.py  the names, help and buckets of the metrics our served models publish in Triton
    tables.py   markdown tables for reports
"""
