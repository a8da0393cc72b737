"""The application built on the attnprobe library: the ``attnprobe`` command
(`attnprobe.app.cli`), the bundled RollingQ example (`attnprobe.app.example`) and run reports
(`attnprobe.app.report`, with `attnprobe.app.runs` reading run files and
`attnprobe.app.figures` drawing them).

The application imports the library through its public names; the library never imports the
application.
"""
