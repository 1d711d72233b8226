"""What runs beside the request path: the status page (`ui/`), warm-up replay (`warmup.py`), warm-up records
from a request log (`fromlog.py`), the load generator (`bench/`) and the demo model repository (`demo.py`)."""
