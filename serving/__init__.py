"""serving-engine: a model-serving runtime with TF Serving compatible front ends."""

__version__ = "0.1.0"
