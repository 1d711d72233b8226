"""KServe V2 gRPC with Triton's client (pip install 'tritonclient[grpc]'): one input per PMML field.

    python client.py localhost:9090
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(sys.argv[1])
columns = {"x1": np.array([0.5, -1.0]), "x2": np.array([1.0, 0.0]), "color": np.array([b"red", b"blue"], object)}
inputs = []
for name, column in columns.items():
    inputs.append(grpcclient.InferInput(name, [len(column)], "BYTES" if column.dtype == object else "FP64"))
    inputs[-1].set_data_from_numpy(column)
result = client.infer("pmml_reg", inputs)
print(result.as_numpy("predicted_y"))
