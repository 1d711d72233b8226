"""What the protocols' codecs share: JSON reading and writing, JSON values to arrays, and the TensorFlow
tensor protos (dtype tables included). Each protocol's own codec is in serving/protocols/<protocol>/."""
