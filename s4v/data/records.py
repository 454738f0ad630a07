"""What every annotation format reads into, shared by the recognition and the caption readers."""

from __future__ import annotations

from dataclasses import dataclass

from s4v.core.errors import UserError


class AnnotationError(UserError):
    """A malformed or missing annotation file; the message starts with `file:line:` or `file:`."""


@dataclass(frozen=True)
class VideoRecord:
    path: str
    label: int
