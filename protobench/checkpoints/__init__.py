"""Reading checkpoint files safely: protobench's safetensors and the original repositories' pickles."""
