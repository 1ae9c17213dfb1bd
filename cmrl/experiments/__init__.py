"""Layer 4, experiments built on training and evaluation: fine-tuning, sweeps, reports, routing
analysis, ablations, the speed bench and the recipes."""
