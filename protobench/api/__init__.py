"""The Python API behind `import protobench`: load or wrap a model, evaluate it on a directory, a
Dataset or a DataLoader, and work with the results as DataFrames (docs/python.md).

Nothing is imported here: `protobench/__init__.py` imports each function the first time it is used.
"""
