"""The transports: HTTP/1.1 on httptools (`http.py`: connections, limits, deadlines, pipelining), the gRPC
server's own parts (`rpc/`) and the token check both use (`auth.py`). They carry bytes; what a path or a
method means is the protocols' (serving/protocols/)."""
