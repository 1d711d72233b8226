"""Processors: one module per framework, each a `serving.core.processor.Processor` subclass."""
