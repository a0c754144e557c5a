"""From predictions to numbers, without torch: scorers, continual-learning metrics, the report (matrices,
selection, confusion, comparison, summary) and its plots."""
