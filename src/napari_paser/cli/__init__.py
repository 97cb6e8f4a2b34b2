"""The ``napari-paser`` command line: headless synth, segment, train, evaluate, benchmark."""
