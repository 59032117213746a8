"""Checks of objective options shared by several objective families."""


def check_label_smoothing(value: float) -> None:
  """Raises a ValueError naming config.objective.label_smoothing unless it is in [0, 1)."""
  if not 0.0 <= value < 1.0:
    raise ValueError(f"config.objective.label_smoothing={value} must be in [0, 1).")
