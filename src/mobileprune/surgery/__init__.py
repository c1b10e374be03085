"""Structural surgery: physically smaller models (compaction, dead units, folding)."""
