"""The command line's commands, by family; cli.py gathers them into one group."""
