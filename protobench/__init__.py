"""protobench: how faithful are a prototype network's explanations?

Measures the spatial misalignment of prototypical-part explanations (PLC / PAC / PRC)
with a batched adversarial attack restricted to pixels outside each prototype's
activation region. See ``docs/metrics.md``.
"""

__version__ = "0.1.0"
