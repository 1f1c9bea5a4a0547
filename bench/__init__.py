"""The benchmark harness of taskservice: `make bench`, or `python -m bench --help`."""
