"""ocm: an online chat messenger server and client on Twisted."""

__version__ = "0.1.0"
