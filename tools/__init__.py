"""Command-line tools: run as scripts (`python tools/<name>.py`) or as the installed commands `mtf-<name>`
(setup.py maps this directory to the package megatron_tf_tools). Each is a thin front; the logic is in megatron_tf/."""
