"""A cut model beyond this process: the HTTP embedding server (`server`, `mm2d serve`), the encoder that
calls such an endpoint or mixedbread's API (`remote`), and a cut model written out as a folder that other
tools load as is (`export`, `mm2d export`)."""

__all__: list[str] = []
