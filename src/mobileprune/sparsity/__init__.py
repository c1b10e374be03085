"""What to prune and how: targets, masks, regularizers, ADMM (seed 003), proximal training (seed 000), reports."""
