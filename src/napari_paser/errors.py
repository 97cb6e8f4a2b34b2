"""Errors that mean "the input is not usable", reported to users as one clear line."""


class PaserInputError(ValueError):
    """Bad user input: an unusable image, labels, file or bundle.

    The command line prints its message without a traceback and exits non-zero; the
    napari widget shows it as a notification.
    """
