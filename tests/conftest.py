import os

# Keep the frameworks on one thread each: the suite runs on 2 cores beside server processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
