"""Outputs: how results reach the disk (output directories, class-average files, figures).

Below the jobs and the averaging toolkit, so that both write through the same helpers."""
