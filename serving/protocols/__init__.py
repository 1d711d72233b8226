"""The protocols, one folder each: `tfserving` (TF Serving REST and gRPC), `kserve` (KServe V2 REST and
gRPC) and `cloud` (the cloud processor protocol: JSON and protobuf bodies, token auth). Each holds its
codec and its adapters: `rest.py` turns an HTTP request, `rpc.py` a gRPC message, into a
`serving.core.pipeline.Call` and the outputs or the error back into the protocol's answer. What adapters share
is in `serving.protocols.adapters`; `router.py` picks the adapter of an HTTP request's path."""
