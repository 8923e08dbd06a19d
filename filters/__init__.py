"""First-party L4 and L7 filters and load balancers, imported as ``meshcore.filters``.

They use only the public API (``from meshcore import ...``) and register through the
``meshcore`` entry-point group exactly as a third-party plugin does.
"""
