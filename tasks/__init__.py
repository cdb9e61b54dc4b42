"""One Prefect task per stage: a thin wrapper over one vss_core call, plus logging and artifacts."""
