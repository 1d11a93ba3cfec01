"""`portcullis policy replay`: re-decide logged requests with a candidate policy.

The decision log (read through :mod:`gateway.audit.reader`) holds every
decision's input with its original ``now_ns``; replay asks a candidate policy
(and optionally a baseline) the gateway's own question through
:func:`gateway.policy.decision.decide`, compares with :mod:`gateway.policy.divergence`, and
reports what would change (``report`` model, ``output/`` one file per format).
"""
