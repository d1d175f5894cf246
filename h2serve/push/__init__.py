"""Push maps and push plans: what to promise, preload and hint with a page."""
