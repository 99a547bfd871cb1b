"""What the framework adapters beside this folder (`langchain.py`, `llama_index.py`, `chroma.py`, `ray.py`)
share: one pydantic field per encoder option (`fields`), and the arguments of the classes users come from
mapped onto those options (`compat`)."""

__all__: list[str] = []
