"""pytest at the repository root: the deprecated shim modules warn on import, and the suite
turns warnings into errors, so `--doctest-modules` does not import them (tests/test_package.py
checks them)."""

collect_ignore = ["attnprobe/example.py", "attnprobe/report.py", "attnprobe/cli.py"]
