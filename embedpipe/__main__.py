"""`python -m embedpipe`: the command line without the console script."""

from embedpipe.cli import app

app(prog_name="embedpipe")
