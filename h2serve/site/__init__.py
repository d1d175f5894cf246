"""The static site: from a request to a `Response`, and the caches behind it."""
