"""Selection scores and top-k against hand-computed cases."""

import math

import torch

from modalprompt.model.selection import select_for_inference, select_for_training, task_scores


def test_scores_match_hand_computation():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    image = torch.tensor([[2.0, 0.0]])  # cos with keys: 1, 0, 1/sqrt2
    text = torch.tensor([[0.0, 3.0]])  # cos with keys: 0, 1, 1/sqrt2
    scores = task_scores(image, text, keys, lam=0.25)
    expected = [0.25 * 1 + 0.75 * 0, 0.25 * 0 + 0.75 * 1, 1 / math.sqrt(2)]
    assert torch.allclose(scores, torch.tensor([expected]), atol=1e-6)


def test_samples_without_image_score_on_text_alone():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.zeros(2, 2)
    text = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    scores = task_scores(image, text, keys, lam=0.5, has_image=torch.tensor([False, True]))
    assert torch.allclose(scores[0], torch.tensor([0.0, 1.0]))
    assert torch.allclose(scores[1], torch.tensor([0.5, 0.0]))  # zero image vector: cos 0


def test_inference_takes_top_k_ascending():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.7, 0.9]])
    assert select_for_inference(scores, 3).tolist() == [[3, 2, 1], [2, 0, 3]]


def test_inference_uses_all_tasks_when_fewer_than_k():
    scores = torch.tensor([[0.9, 0.1]])
    assert select_for_inference(scores, 3).tolist() == [[1, 0]]


def test_inference_ties_are_deterministic():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert select_for_inference(scores, 2).tolist() == [[1, 0]]  # lower index ranks higher, so it is last


def test_training_first_stages_use_all_previous_in_task_order():
    assert select_for_training(torch.zeros(2, 0), 3).tolist() == [[0], [0]]  # t = 1 -> [P1]
    assert select_for_training(torch.tensor([[0.3], [0.9]]), 3).tolist() == [[0, 1], [0, 1]]  # t = 2


def test_training_picks_top_k_minus_one_previous_then_current():
    previous = torch.tensor([[0.2, 0.8, 0.5], [0.9, 0.1, 0.4]])  # t = 4, K = 3
    assert select_for_training(previous, 3).tolist() == [[2, 1, 3], [2, 0, 3]]


def test_training_with_k_one_uses_only_the_current_prompt():
    assert select_for_training(torch.rand(3, 5), 1).tolist() == [[5], [5], [5]]


def test_prefix_never_exceeds_k_prompts():
    for t in range(1, 13):
        assert select_for_inference(torch.rand(2, t), 3).shape == (2, min(t, 3))
        assert select_for_training(torch.rand(2, t - 1), 3).shape == (2, min(t, 3))
