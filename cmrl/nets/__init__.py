"""Layer 1, the networks: shared layers, the observation normaliser, the soft-modular network
(routing), the CARE mixture encoder, the context encoder (product of Gaussians), the actor/critic
assembly and the text encoders. Imports only `cmrl.config`; no environment, no training loop."""
