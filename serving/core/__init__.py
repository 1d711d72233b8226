"""The engine's core, which no protocol or transport knows about: the processor contract (`processor.py`,
`signature.py`), a loaded version (`servable.py`), the model repository and its versions (`repository.py`,
`model_config.py`, `remote.py` for object storage, `control.py` for loads and unloads asked at run time),
the dynamic-batching scheduler (`batching/`) and the one request path every protocol enters
(`pipeline.py` -> `dataplane.py`). It imports only `serving.errors`, `serving.redact` and `serving.settings`."""
