"""Pure tensor functions: proximal operators, projections, groupings (no nn.Module, no I/O)."""
