"""Retrieval-augmented generation over a folder of documents: load, split, index, retrieve, answer."""
