"""The gRPC server's own parts (grpc.aio on the server's event loop): registering the services with a
decoder that answers undecodable messages INVALID_ARGUMENT (`decode.py`) and the token check
(`interceptors.py`). The services themselves are the protocols' adapters (serving/protocols/*/rpc.py)."""
