"""HTTP: the message model, the codec seam and its h11 codecs, routing, the connection manager."""
