"""The project's own errors: the ones a user can fix (a bad config value, a bad input file, a missing file).

Every named error of the package subclasses `ReviewgenError`, so the command line can tell them from bugs:
a `ReviewgenError` prints as one line, anything else is logged with its traceback. This module imports
nothing from the package, so every layer (infra included) may import it.
"""

from __future__ import annotations


class ReviewgenError(Exception):
    """An error the user can act on; its message names the file, key, row or flag at fault."""


class InputError(ReviewgenError, ValueError):
    """A user-supplied value or file's content cannot be used (a wrong column, an unsupported file type)."""


class MissingInputError(ReviewgenError, FileNotFoundError):
    """A file or directory the user named does not exist."""
