"""Scripts run by the Waymo venv's python (`make waymo-env`), never imported by itkd.

waymo-open-dataset pins tensorflow 2.13 and typing_extensions 4.5, which break torch and pydantic, so
it lives in a venv of its own; `itkd_cli.core.waymo_env.run_tool` runs `tool.py` there as a process and
the two sides exchange .npz / .npy / JSON files only (no pickle). Modules here import the standard
library, numpy, tensorflow, waymo_open_dataset and each other (by plain module name) only:
tool.py (the command line) -> frames.py, convert.py, write.py, metrics.py -> points.py, common.py.
"""
