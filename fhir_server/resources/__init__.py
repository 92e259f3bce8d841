"""radhub."""
