"""The kvferry Kubernetes operator (kopf): desired-state functions, apply layer, planner.

Imported as `kvferry.operator`; never as a top-level `operator` (that is a stdlib module).
"""
