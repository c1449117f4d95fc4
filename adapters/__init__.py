"""Model-family adapters, one module per family; installed as `protobench.adapters`."""
