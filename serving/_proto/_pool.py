"""The private descriptor pool of the generated messages (written by protos/generate.py)."""

from google.protobuf import descriptor_pool
from google.protobuf import any_pb2
from google.protobuf import wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _well_known in (any_pb2, wrappers_pb2,):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
