"""`mm2d adapt`: exit heads that make an ordinary model cut well in depth, learned from your own text."""

__all__: list[str] = []
