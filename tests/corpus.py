"""A small set of documents and the question each one answers, for end-to-end retrieval tests."""

from pathlib import Path


def indexed_chunk_ids(folder: Path, model: str) -> set[str]:
    """The ids of the chunks `mm2d index FOLDER --model MODEL` writes: cut by the model's tokens."""
    from mm2d_integrations import Matryoshka2DEncoder
    from mm2d_integrations.retrieval.documents import Chunking, load_folder, split_documents

    return {chunk.id for chunk in split_documents(load_folder(folder).documents, Chunking.by_tokens(Matryoshka2DEncoder(model)))}


DOCUMENTS = {
    "travel": "Employees book flights through the travel portal at least 14 days before departure; economy class only.",
    "security": "Laptops must use full-disk encryption and lock the screen after 5 minutes of inactivity.",
    "battery": "The Cell home battery stores 10 kWh and carries a ten-year warranty on capacity.",
    "payroll": "Salaries are paid on the 25th of each month by bank transfer.",
    "outage": "The February outage lasted 47 minutes and was caused by an expired TLS certificate.",
    "coffee": "The office kitchen has an espresso machine that is descaled every Friday.",
}
QUESTIONS = {
    "How early do I need to book flights for a business trip?": "travel",
    "When does my screen have to lock?": "security",
    "How much energy can the home battery hold?": "battery",
    "What day of the month is salary paid?": "payroll",
    "What caused the outage in February?": "outage",
    "How often is the espresso machine cleaned?": "coffee",
}
