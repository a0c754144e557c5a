"""Task scores and top-k prompt selection: pure tensor functions, no model, no state.

Task indices are 0-based positions in the learned-task sequence (stage s holds task s - 1).
Selected indices are ordered by ascending score, so the most similar prompt sits last, next to the text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_scores(
    image_query: torch.Tensor,  # (B, e)
    text_query: torch.Tensor,  # (B, e)
    keys: torch.Tensor,  # (S, e)
    lam: float,
    has_image: torch.Tensor | None = None,  # (B,) bool; samples without an image score on text alone
) -> torch.Tensor:  # (B, S)
    """g_s = lam * cos(f_v, k_s) + (1 - lam) * cos(f_q, k_s)."""
    keys = F.normalize(keys.float(), dim=-1)
    cos_text = F.normalize(text_query.float(), dim=-1) @ keys.T  # (B, S)
    cos_image = F.normalize(image_query.float(), dim=-1) @ keys.T  # (B, S)
    scores = lam * cos_image + (1.0 - lam) * cos_text
    if has_image is not None:
        scores = torch.where(has_image[:, None], scores, cos_text)
    return scores


def _top_ascending(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores per row, ordered by ascending score. Ties: lower index ranks higher."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # (B, S)
    return order[:, :k].flip(-1)


def select_for_inference(scores: torch.Tensor, transfer_num: int) -> torch.Tensor:
    """After stage t: the top min(t, K) of all learned tasks, ascending. scores (B, t) -> (B, min(t, K))."""
    return _top_ascending(scores, min(scores.shape[-1], transfer_num))


def select_for_training(previous_scores: torch.Tensor, transfer_num: int) -> torch.Tensor:
    """At stage t: K - 1 previous tasks then the current one (index t - 1). previous_scores (B, t - 1).

    With fewer previous tasks than the K - 1 slots, all of them are used in task order; otherwise the
    top K - 1 by score, ascending. The current task always comes last.
    """
    batch, n_previous = previous_scores.shape
    slots = transfer_num - 1
    if n_previous < slots:
        previous = torch.arange(n_previous, device=previous_scores.device).expand(batch, n_previous)
    else:
        previous = _top_ascending(previous_scores, slots)
    current = torch.full((batch, 1), n_previous, dtype=torch.long, device=previous_scores.device)
    return torch.cat([previous, current], dim=-1)  # (B, min(t, K))
