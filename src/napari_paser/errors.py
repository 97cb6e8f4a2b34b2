"""Errors that mean "the input is not usable", reported to users as one clear line."""


class PaserInputError(ValueError):
    """Bad user input: an unusable image, labels, file or bundle.

    The command line prints its message without a traceback and exits non-zero; the
    napari widget shows it as a notification.
    """


def one_line(err: BaseException) -> str:
    """One line for a notification: the text of an input or file error, else type and text."""
    if isinstance(err, (PaserInputError, FileExistsError, FileNotFoundError)):
        return str(err)
    return f"{type(err).__name__}: {err}"
