"""The toolkit's shared code."""
