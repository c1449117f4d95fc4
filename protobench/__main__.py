from protobench.cli import app

app(prog_name="protobench")
