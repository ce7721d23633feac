"""Scoring batches of image paths: the same code in predict's own process and on Dask workers.

`scoring.py` decodes and scores one batch (no dask); `dask_worker.py` is what a Dask worker runs for
`--scheduler` (imported only on that path). Neither imports typer or rich, nor cnncli.commands.
"""
