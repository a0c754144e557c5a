"""The checkpoints a job names as its Snakemake inputs (Method.dag_inputs) lose no dependency.

A job reads every stage its method says, but names only the stages that no other of them was trained from:
the rest must still be upstream of what it names, so that a change to any of them reruns it. The DAG-level
proof (a deleted early stage reruns every later stage and evaluation) is test_workflow's
test_a_changed_early_stage_reruns_every_later_stage_and_evaluation.
"""

from __future__ import annotations

import pytest

from modalprompt import methods

STAGES = range(0, 9)


def _reached(owner: methods.Method, named: list[int]) -> set[int]:
    """The stages the DAG reaches from `named` through the owner's training inputs (the train rule's edges)."""
    reached, todo = set(), list(named)
    while todo:
        stage = todo.pop()
        if stage not in reached:
            reached.add(stage)
            todo.extend(owner.dag_inputs(owner.training_inputs(stage)))
    return reached


@pytest.mark.parametrize("name", sorted(n for n, m in methods.REGISTRY.items() if m.prompts_of))
def test_the_named_inputs_reach_every_stage_a_job_reads(name):
    method = methods.get(name)
    owner = methods.get(method.prompts_of)
    for stage in STAGES:
        reads = method.evaluation_inputs(stage)
        assert set(reads) <= _reached(owner, owner.dag_inputs(reads)), (name, "evaluation", stage)
        if method.trains:
            reads = method.training_inputs(stage)
            assert set(reads) <= _reached(method, method.dag_inputs(reads)), (name, "training", stage)


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_a_job_names_at_most_one_stage(name):
    """What keeps the DAG's edges linear in the number of tasks: one checkpoint per job, not one per stage."""
    method = methods.get(name)
    owner = methods.get(method.prompts_of) if method.prompts_of else None
    for stage in range(0, 33):
        if owner:
            assert len(owner.dag_inputs(method.evaluation_inputs(stage))) <= 1
        if method.trains:
            assert len(method.dag_inputs(method.training_inputs(stage))) <= 1


def test_a_stage_trained_from_several_others_names_only_the_latest():
    chain = methods.get("modalprompt")
    assert chain.dag_inputs([1, 2, 3, 4]) == [4]
    assert chain.dag_inputs(chain.training_inputs(4)) == [3]
    assert chain.dag_inputs([]) == []
    independent = methods.get("multitask")  # each stage from the base: nothing is upstream of another
    assert independent.dag_inputs([2, 5]) == [2, 5]
