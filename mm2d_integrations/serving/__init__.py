"""`mm2d serve`: the HTTP embedding server (`server`)."""

__all__: list[str] = []
