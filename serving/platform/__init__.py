"""The process around the engine: worker processes, their supervisor and the siblings' fan-out
(`workers.py`) and the ModelMesh runtime service (`modelmesh.py`)."""
