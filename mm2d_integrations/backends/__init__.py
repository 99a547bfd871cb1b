"""Other ways to run the cut model than eager torch: int8 linear layers (`int8`), ONNX Runtime (`onnx`),
an HTTP endpoint (`remote`), and writing a cut model out as a folder other tools load (`export`)."""

__all__: list[str] = []
