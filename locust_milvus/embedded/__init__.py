"""The embedded Milvus server (the `milvus` wheel) and its loopback relay."""
