"""consistency: the share of prototypes whose box holds one annotated part on most of their class's
images (protobench.core.partscores; `--metrics consistency`)."""

from protobench.core.metrics import MetricSpec, register


def per_prototype(records):
    from protobench.core import partscores  # numpy: imported when a per-prototype table is made

    return partscores.consistency(records)


register(MetricSpec("consistency", "consistency (prototypes on one part, %)", "%", False, 2.0, order=70,
                    suite="consistency", per_prototype=per_prototype))
