"""Application layer: the command line, RELION External job, Dask and cryoSPARC integrations."""
