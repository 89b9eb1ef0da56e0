"""The gateway's caches: exact answers, and generations by prompt meaning.

What each caches, its key and its bounds: docs/caching.md.
"""
