"""Processors: one module per framework, each a `serving.processor.Processor` subclass."""
