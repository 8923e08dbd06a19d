"""The fast HTTP/1.1 codecs: the same contracts as the h11 codecs, fewer layers.

h11 is the reference codec: strict, readable, and about half of the proxy's CPU per
request. These codecs implement :class:`~meshcore.http.codec.ServerCodec` and
:class:`~meshcore.http.codec.ClientCodec` with one buffer and C-level bytes methods, and
are held to h11's behaviour by differential tests (tests/test_fast_h1.py): generated and
byte-mutated messages, split at random, must give the same events or be rejected with the
same status. Select them with ``codec: fast`` on a connection manager or a cluster.

Split the way h11 splits: shared readers and writers, then one module per side.
"""

from meshcore.http.h1fast.client import FastClientCodec
from meshcore.http.h1fast.server import FastServerCodec

__all__ = ["FastClientCodec", "FastServerCodec"]
