"""napari-paser: PaSeR patch-routed phase segmentation of battery-electrode micro-CT.

Importing this package is cheap: torch is imported only by the engine and training
modules, when a segmentation or training actually runs.
"""

__version__ = "0.1.0"

CLASS_NAMES = ("pore", "carbon-binder", "nickel")
"""Phase labels in index order: 0 pore, 1 carbon-binder, 2 nickel active material."""

CLASS_COLORS = ("#3b4cc0", "#f0c808", "#d1495b")
"""One RGB hex colour per phase, shared by the napari layers and exported reports."""

AXIS_NAMES = ("plane", "row", "column")
"""Names of a stack's axes (scikit-image's); a single slice has the last two. The napari
layers the plugin makes carry them, so the viewer's slider says "plane", not "-3"."""

__all__ = ["AXIS_NAMES", "CLASS_COLORS", "CLASS_NAMES", "__version__"]
