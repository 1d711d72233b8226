"""KServe V2 gRPC with Triton's client (pip install 'tritonclient[grpc]').

    python client.py localhost:9090
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(sys.argv[1])
x = np.array([[0.5, -1.2, 0.3, 1.0], [-0.5, 0.2, 0.0, 0.0]], dtype=np.float32)
inputs = [grpcclient.InferInput("inputs", list(x.shape), "FP32")]
inputs[0].set_data_from_numpy(x)
result = client.infer("lgbm", inputs)
print(result.as_numpy("predictions"))
