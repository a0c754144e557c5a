"""What `modalprompt submit` runs on the cluster: the `train` command, in each task of a submitit job.

Checkpointable: when submitit's warning signal comes before the time limit (or on preemption), submitit
requeues the job with the same arguments; Slurm's SIGTERM then makes training save its mid-stage state
(with --state-dir), and the requeued job continues from it.
"""

from __future__ import annotations

import submitit


class SubmittedTrain(submitit.helpers.Checkpointable):
    def __call__(self, train_args: list[str]) -> int:
        from modalprompt.cli import main

        code = main(["train", *train_args])
        if code not in (0, None):
            raise RuntimeError(f"modalprompt train exited with {code} (75: stopped with its state saved)")
        return 0
