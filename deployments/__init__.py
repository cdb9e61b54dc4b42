"""How users start vss: the `vss` command line and the Prefect deployments it serves."""
