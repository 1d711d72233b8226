"""The gRPC front end (grpc.aio on the server's event loop): TF Serving's PredictionService and
ModelService, and grpc.health.v1. Codecs turn protobuf messages into named numpy arrays and back;
errors leave as gRPC status codes from the one canonical error model."""
