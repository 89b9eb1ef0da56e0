"""Labelled prompt pairs and the semantic cache's threshold chosen on them (docs/caching.md)."""
