"""What adaptool writes and reads: the layout of its output folders, the typed manifest,
reading, loading and checking an adapter, the model card, output dirs and the local index."""
