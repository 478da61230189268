"""The shared on-disk and on-store format: every key and spool path, the chunk index, the manifest,
and reading a stored log back."""
