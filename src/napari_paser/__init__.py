"""napari-paser: PaSeR patch-routed phase segmentation of battery-electrode micro-CT.

Importing this package is cheap: torch is imported only by the engine and training
modules, when a segmentation or training actually runs.
"""

__version__ = "0.1.0"

CLASS_NAMES = ("pore", "carbon-binder", "nickel")
"""Phase labels in index order: 0 pore, 1 carbon-binder, 2 nickel active material."""

CLASS_COLORS = ("#3b4cc0", "#f0c808", "#d1495b")
"""One RGB hex colour per phase, shared by the napari layers and exported reports."""

__all__ = ["CLASS_COLORS", "CLASS_NAMES", "__version__"]
