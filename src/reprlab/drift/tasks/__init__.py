"""Built-in training tasks with known phase transitions."""
