"""The one check every layer makes of its string options: the value is one of the allowed choices.

Has no dependencies, so every layer may import it, `resnet_jax.models` (jax, flax and numpy only)
included.
"""

from typing import Any, Iterable


def check_choice(key: str, value: Any, choices: Iterable) -> None:
  """Raises a ValueError naming `key`, the bad value and every valid choice."""
  choices = list(choices)
  if value not in choices:
    raise ValueError(f"{key}={value!r} is not one of {choices}.")
