"""The planner: what one node must do for every service port, shared by every proxy mode.

`planner.plan(state, config) -> NodePlan` is pure (same input, same output, sorted) and never
raises on odd cluster data; `marks` holds the masquerade mark every mode writes.
"""
