"""First-party control-plane plugins (config sources, ...), imported as ``meshcore.plugins``.

They use only the public API (``from meshcore import ...``) and register through the
``meshcore`` entry-point group exactly as a third-party plugin does.
"""
