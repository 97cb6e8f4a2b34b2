"""napari front end of napari-paser: reader, writer, sample data and the dock widget.

Nothing here imports torch at import time; the engine is imported when a run starts.
"""
