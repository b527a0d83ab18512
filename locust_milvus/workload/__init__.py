"""What the users do: the users, the operations table, documents, datasets, embeddings, pacing, recall."""
