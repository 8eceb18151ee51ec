"""spotguard: reclaim memory ahead of a spot interruption, then hibernate into a small image."""

__version__ = "0.1.0"
