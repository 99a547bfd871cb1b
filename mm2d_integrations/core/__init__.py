"""The embedding model, cut in two directions: where a checkpoint comes from and what it says (`source`,
`checkpoint`), loading only the kept layers (`loading`), pooling and Dense modules, exit heads, the options
(`options`), and the encoder that runs text -> tokens -> kept layers -> pooling -> kept dimensions -> vector.
Imports no framework."""

__all__: list[str] = []
