"""Layer 3, the algorithm: the agent (`TaskBelief`: infer_posterior, sample_z, clear_z), the SAC + KL
update, replay, collection, the trainer (Algorithm 1), both evaluators and the loaded-agent API.
Imports layers 0-2."""
