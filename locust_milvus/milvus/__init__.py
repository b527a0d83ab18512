"""Talking to the Milvus under test: building the store and collection, verifying the ledger."""
