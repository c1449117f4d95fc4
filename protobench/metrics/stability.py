"""stability: the share of part hits a prototype keeps under noise (protobench.core.partscores;
`--metrics stability`)."""

from protobench.core.metrics import MetricSpec, register


def per_prototype(records):
    from protobench.core import partscores  # numpy: imported when a per-prototype table is made

    return partscores.stability(records)


register(MetricSpec("stability", "stability (part hits kept under noise, %)", "%", False, 2.0, order=80,
                    suite="stability", per_prototype=per_prototype, needs_noise=True))
