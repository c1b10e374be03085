"""What to prune and how: targets, masks, regularizers, ADMM (seed 003), the proximal regularisers of a model (seed 000; their training loops: mobileprune.pipeline.palm), reports."""
