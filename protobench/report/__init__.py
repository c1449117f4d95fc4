"""`protobench report`: the evidence behind a run's numbers, as pictures (docs/report.md).

    runs.py      read result directories (meta.json, summary.csv, per_image.csv); one Run per model
    tables.py    what the numbers say: the per-prototype table, the worst and best images
    pixels.py    the drawn images' tensors: re-run from meta.json's checkpoint and data (verified), or
    examples.py  read from the examples.safetensors that `evaluate --save-examples K` keeps
    figures.py   matplotlib (Agg): histograms, the comparison chart, one strip per image
    page.py      the self-contained report.html (jinja2, every string escaped, images inline)
    build.py     all of it: `build_report(run_dirs, out, ...)`

Nothing here reaches the network, and matplotlib and torch are imported only where drawing and
re-running need them.
"""
