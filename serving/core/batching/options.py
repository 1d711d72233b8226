"""Batching options: how one queue batches, from the flags or TF Serving's BatchingParameters text."""

from __future__ import annotations

from dataclasses import dataclass

from ...settings import Settings, default


@dataclass(frozen=True)
class BatchingOptions:
    """How one queue batches: the batching settings of serving/settings.py (their help says what each
    means), with the defaults they declare."""

    enabled: bool = default("enable_batching")
    max_batch_size: int = default("max_batch_size")
    batch_timeout_micros: int = default("batch_timeout_micros")
    max_queue_size: int = default("max_queue_size")
    max_in_flight: int = default("worker_threads")  # batches at once per queue
    allowed_batch_sizes: tuple[int, ...] = ()  # --allowed_batch_sizes, parsed
    pad_variable_length_inputs: bool = default("pad_variable_length_inputs")
    inline_batch_micros: int = default("inline_batch_micros")

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_size < 1 or self.max_in_flight < 1:
            raise ValueError("max_queue_size and worker threads must be at least 1")
        if self.inline_batch_micros < 0:
            raise ValueError("inline_batch_micros must be 0 or more")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"The last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                    f"{sizes[-1]}; expected {self.max_batch_size}"
                )


def from_batching_parameters(text: str, base: BatchingOptions, source: str = "batching parameters") -> BatchingOptions:
    """Apply a TF Serving BatchingParameters text (--batching_parameters_file) over `base`.

    `max_enqueued_batches` counts batches in TF Serving; the queue here counts requests, so it becomes
    max_enqueued_batches x max_batch_size. `num_batch_threads` is the batches run at once.
    """
    from google.protobuf import text_format

    from ..._proto.tensorflow_serving.servables.tensorflow import session_bundle_config_pb2 as sb

    params = sb.BatchingParameters()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as e:
        raise ValueError(f"{source}: not a valid BatchingParameters: {e}") from e
    size = params.max_batch_size.value if params.HasField("max_batch_size") else base.max_batch_size
    options = BatchingOptions(
        enabled=True,
        max_batch_size=size,
        batch_timeout_micros=(params.batch_timeout_micros.value if params.HasField("batch_timeout_micros")
                              else base.batch_timeout_micros),
        max_queue_size=(params.max_enqueued_batches.value * size if params.HasField("max_enqueued_batches")
                        else base.max_queue_size),
        max_in_flight=(params.num_batch_threads.value if params.HasField("num_batch_threads")
                       else base.max_in_flight),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes) or base.allowed_batch_sizes,
        pad_variable_length_inputs=params.pad_variable_length_inputs or base.pad_variable_length_inputs,
        inline_batch_micros=base.inline_batch_micros,
    )
    try:
        options.validate()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    return options


def options_from_settings(settings: Settings) -> BatchingOptions:
    """The batching settings, with a --batching_parameters_file over them; raises ValueError."""
    try:
        allowed = tuple(int(x) for x in settings.allowed_batch_sizes.split(",") if x.strip())
    except ValueError as e:
        raise ValueError(f"--allowed_batch_sizes: expected comma-separated integers: {e}") from e
    options = BatchingOptions(
        enabled=settings.enable_batching,
        max_batch_size=settings.max_batch_size,
        batch_timeout_micros=settings.batch_timeout_micros,
        max_queue_size=settings.max_queue_size,
        max_in_flight=settings.worker_threads,
        allowed_batch_sizes=allowed,
        pad_variable_length_inputs=settings.pad_variable_length_inputs,
        inline_batch_micros=settings.inline_batch_micros,
    )
    if settings.batching_parameters_file:
        path = settings.batching_parameters_file
        try:
            text = open(path).read()
        except OSError as e:
            raise ValueError(f"cannot read --batching_parameters_file {path}: {e.strerror}") from e
        options = from_batching_parameters(text, options, path)
    options.validate()
    return options
