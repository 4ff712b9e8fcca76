"""GPU descriptions (GpuTargetConfigProto text files) that XLA compiles for without the GPU:
see :mod:`bptt_cli.runner.aot`."""
