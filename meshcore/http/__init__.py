"""HTTP: the message model, the codec seam and its codecs, routing, semantics. No sockets.

The connection manager and the HTTP/2 sessions that drive these over trio streams are
in :mod:`meshcore.runtime`, one layer up: nothing here imports the runtime.
"""
