"""`--dataset protoshapes`: the demo's drawn shapes (protobench.demo.shapes), `--data protoshapes[:split]`."""

from protobench.data.layouts import LAYOUTS
from protobench.demo.shapes import LAYOUT

LAYOUTS.add("protoshapes", LAYOUT)
