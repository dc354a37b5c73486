"""Merging: streamed folding of an adapter into its base, verification, and combining adapters."""
