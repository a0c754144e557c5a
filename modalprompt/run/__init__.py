"""The running machinery: the stage functions (`train`, `evaluate`, `experiment`), stage checkpoints,
mid-stage states, the training engines, multi-process start-up and Slurm submission."""
