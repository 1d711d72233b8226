"""What the server tells its operators: Prometheus metrics (`metrics.py`), Triton's statistics extension
(`statistics.py`), the access log (`accesslog.py`), the request log (`requestlog.py`), shadow traffic
(`shadow.py`) and tracing (`tracing.py`). Observers of the request path; they sit above `core` and `codecs`
and below the transports."""
