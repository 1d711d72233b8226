"""HTTP/2 for the native gRPC server (serving/transport/rpc/native.py): the frame layer (`frames.py`), HPACK
with the per-connection header-block cache and the pre-encoded answers (`headers.py`), and the connection
(`connection.py`: an asyncio.Protocol with the stream state machine, flow control and the limits)."""
