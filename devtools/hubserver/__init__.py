"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests and benches.

It speaks the subset of the Hub API that the real huggingface_hub 2.x client uses to download and upload a
model repo, and it injects the faults vss must survive. Start it in-process:

    from devtools.hubserver import HubServer
    with HubServer(tokens={"hf_write": "write"}) as hub:
        hub.add_repo_from_dir("org/model", some_dir)
        # point huggingface_hub at hub.url (endpoint=hub.url or HF_ENDPOINT in a subprocess)

It never advertises Xet (no X-Xet-* headers, no xetHash in the tree, uploads answered as "regular"), so
the client takes its plain HTTP path for downloads and the NDJSON commit for uploads.
"""

from devtools.hubserver.server import Blob, Faults, HubServer

__all__ = ["Blob", "Faults", "HubServer"]
