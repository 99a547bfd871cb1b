"""The embedding model, cut in two directions, as the flow runs: where a checkpoint comes from and what it
says (`source`, `checkpoint`), loading only the kept layers (`loading`), how the kept layers run
(eager torch, `int8` linear layers, or ONNX Runtime: `onnx`), pooling and Dense modules, exit heads, the
options (`options`), and the encoder that runs text -> tokens -> kept layers -> pooling -> kept
dimensions -> vector. Imports no framework."""

__all__: list[str] = []
