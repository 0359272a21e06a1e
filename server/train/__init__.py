"""Training models the server serves: `vst train keyframes` (data.py, keyframes.py) and its command (command.py)."""
