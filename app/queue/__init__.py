"""What background work there is and who can do it: work items, leases, the worker registry.

The bottom of the one background mechanism: any package may enqueue work (a dataset build),
check a lease or ask whether a worker can train; app/worker/ runs the claim loop on top.
"""
