"""Wire codecs: bytes of one protocol <-> named numpy arrays. The engine core never sees a wire format."""
