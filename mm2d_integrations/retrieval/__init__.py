"""From documents to stored vectors and back, without a framework: reading and chunking documents
(`documents`), the store's names, defaults and errors (`store_rules`), funnel search over a vector's prefix
(`funnel`) and the float16 rows it re-ranks with (`vector_rows`)."""

__all__: list[str] = []
