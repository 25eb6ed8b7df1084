"""``cbir serve``: a web page and JSON API to search saved indexes by example, see why a
result matched, and compare two pipelines side by side (``cbir.server.app``)."""
