"""A second retrieval benchmark set: Debian's Linux man pages as a known-item task.

See ``README.md`` beside this file; build it with ``python -m bench.manpages``.
"""

from ._build import DEFAULT_OUT, PACKAGES, Page, build, parse_page, render

__all__ = ("DEFAULT_OUT", "PACKAGES", "Page", "build", "parse_page", "render")
