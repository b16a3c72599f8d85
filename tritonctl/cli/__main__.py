"""`python -m tritonctl.cli`: the same entry point as the `tritonctl` script."""

from tritonctl.cli import main

main()
