"""The `vss` flow."""
