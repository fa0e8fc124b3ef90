"""Reading knowledge sources into chunks.

FAQ entries come from JSONL and from CSV/Excel sheets (question/answer columns, named by `FaqColumns`);
documents (Markdown, text, PDF, Word .docx, HTML) are cut into sections at their headings. Intent
examples come from `intents.json`/`intents.jsonl`. A file (or FAQ row) that cannot be read is
reported in `Sources.skipped` with its name and the reason, and the build goes on without it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import KBError
from .text import detect_lang

FAQ_SUFFIXES = (".jsonl", ".csv", ".xlsx", ".xlsm")
DOC_SUFFIXES = (".md", ".markdown", ".txt", ".pdf", ".docx", ".html", ".htm")


@dataclass
class Chunk:
    id: str
    title: str
    text: str
    source: str
    category: str = ""
    lang: str = ""
    answer: str = ""
    question: str = ""
    questions: list[str] = field(default_factory=list)

    def embed_text(self) -> str:
        """The passage side: what the entry says (title + body)."""
        return f"{self.title}\n{self.text}" if self.title and self.title not in self.text else self.text

    def phrasings(self) -> list[str]:
        """The ways customers ask for this entry: the question and its alternative phrasings; for a
        document section its heading, which names what the section is about."""
        if not self.question:
            return [self.title] if self.title else []
        return list(dict.fromkeys([self.question, *self.questions]))


@dataclass
class FaqColumns:
    """Column (or JSON key) names of FAQ sheets; matched case-insensitively."""

    question: str = "question"
    answer: str = "answer"
    id: str = "id"
    title: str = "title"
    category: str = "category"
    lang: str = "lang"
    alternates: str = "questions"


@dataclass
class Skipped:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Sources:
    chunks: list[Chunk]
    intents: list[tuple[str, str]]
    skipped: list[Skipped] = field(default_factory=list)
    files: int = 0


def stable_id(chunk_id: str) -> int:
    """63-bit id derived from the entry id, so ids survive rebuilds and reordering."""
    return int.from_bytes(hashlib.sha1(chunk_id.encode("utf-8")).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def _slug(text: str) -> str:
    slug = re.sub(r"[^0-9a-z\u4e00-\u9fff]+", "-", text.lower()).strip("-")
    return slug[:48] or "section"


# ------------------------------------------------------------------------------------------ FAQ rows


def _split_alternates(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    # Sheets hold several phrasings in one cell, one per line or separated by "|".
    return [part.strip() for part in re.split(r"[\n|]", str(value)) if part.strip()]


def faq_chunk(row: dict[str, Any], columns: FaqColumns, source: str, fallback_id: str) -> Chunk:
    """One FAQ entry from a row whose keys are already lower-cased; KeyError/ValueError if unusable."""

    def cell(name: str) -> str:
        value = row.get(name.lower())
        return "" if value is None else str(value).strip()

    question, answer = cell(columns.question), cell(columns.answer)
    if not question or not answer:
        raise ValueError(f"needs both '{columns.question}' and '{columns.answer}'")
    return Chunk(
        id=cell(columns.id) or fallback_id,
        title=cell(columns.title) or question,
        text=f"{question}\n{answer}",
        source=source,
        category=cell(columns.category),
        lang=cell(columns.lang) or detect_lang(question),
        answer=answer,
        question=question,
        questions=_split_alternates(row.get(columns.alternates.lower())),
    )


def _faq_rows(path: Path, rows: Iterable[tuple[str, dict[str, Any]]], columns: FaqColumns,
              skipped: list[Skipped]) -> list[Chunk]:
    chunks = []
    for where, row in rows:
        if not any(str(v).strip() for v in row.values() if v is not None):
            continue
        try:
            chunks.append(faq_chunk(row, columns, path.name, f"{path.stem}-{where}"))
        except (KeyError, ValueError, TypeError) as exc:
            skipped.append(Skipped(f"{path}:{where}", str(exc)))
    return chunks


def read_jsonl_faq(path: Path, columns: FaqColumns, skipped: list[Skipped]) -> list[Chunk]:
    def rows() -> Iterable[tuple[str, dict[str, Any]]]:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                skipped.append(Skipped(f"{path}:{lineno}", f"not JSON ({exc})"))
                continue
            if not isinstance(data, dict):
                skipped.append(Skipped(f"{path}:{lineno}", "not a JSON object"))
                continue
            yield str(lineno), {str(k).lower(): v for k, v in data.items()}

    return _faq_rows(path, rows(), columns, skipped)


def _check_header(path: Path, header: list[str], columns: FaqColumns) -> None:
    missing = [c for c in (columns.question, columns.answer) if c.lower() not in header]
    if missing:
        found = ", ".join(h for h in header if h) or "empty"
        raise KBError(f"no column named {' or '.join(repr(m) for m in missing)} in the header ({found}); "
                      "name them with --question-column/--answer-column")


def read_csv_faq(path: Path, columns: FaqColumns, skipped: list[Skipped]) -> list[Chunk]:
    # utf-8-sig: Excel writes a BOM in front of the first header.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.reader(fh, dialect)
        header = [h.strip().lower() for h in next(reader, [])]
        _check_header(path, header, columns)
        rows = [(str(n), dict(zip(header, values))) for n, values in enumerate(reader, 2)]
    return _faq_rows(path, rows, columns, skipped)


def read_excel_faq(path: Path, columns: FaqColumns, skipped: list[Skipped]) -> list[Chunk]:
    import openpyxl

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    chunks: list[Chunk] = []
    try:
        usable = 0
        for sheet in workbook.worksheets:
            rows = sheet.iter_rows(values_only=True)
            header = [str(h).strip().lower() if h is not None else "" for h in next(rows, ())]
            try:
                _check_header(path, header, columns)
            except KBError as exc:
                skipped.append(Skipped(f"{path}[{sheet.title}]", str(exc)))
                continue
            usable += 1
            prefix = "" if len(workbook.worksheets) == 1 else f"{_slug(sheet.title)}-"
            chunks.extend(_faq_rows(path, ((f"{prefix}{n}", dict(zip(header, values)))
                                           for n, values in enumerate(rows, 2)), columns, skipped))
    finally:
        workbook.close()
    return chunks


# ---------------------------------------------------------------------------------------- documents

Section = tuple[str, str]  # (heading, body text)


def sections_to_chunks(path: Path, root: Path, doc_title: str, sections: list[Section],
                       max_chars: int = 900) -> list[Chunk]:
    """Cut each section into paragraph-aligned pieces of at most ~max_chars; ids from the headings."""
    stem = path.relative_to(root).with_suffix("").as_posix()
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for title, body in sections:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body.strip()) if p.strip()]
        pieces: list[str] = []
        buf = ""
        for para in paragraphs:
            if buf and len(buf) + len(para) > max_chars:
                pieces.append(buf)
                buf = ""
            buf = f"{buf}\n\n{para}" if buf else para
        if buf:
            pieces.append(buf)
        full_title = title or doc_title or stem
        for piece in pieces:
            base = f"{stem}#{_slug(full_title)}"
            n = seen.get(base, 0)
            seen[base] = n + 1
            chunk_id = base if n == 0 else f"{base}-{n}"
            chunks.append(Chunk(chunk_id, full_title, piece, path.name, lang=detect_lang(piece), answer=piece))
    return chunks


def markdown_sections(path: Path) -> tuple[str, list[Section]]:
    sections: list[Section] = []
    doc_title = ""
    current, lines = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            if "".join(lines).strip():
                sections.append((current, "\n".join(lines)))
            current, lines = heading.group(2).strip(), []
            if heading.group(1) == "#" and not doc_title:
                doc_title = current
        else:
            lines.append(line)
    if "".join(lines).strip():
        sections.append((current, "\n".join(lines)))
    return doc_title, sections


def group_sections(blocks: Iterable[tuple[bool, str]]) -> tuple[str, list[Section]]:
    """(is_heading, text) blocks in document order → the first heading and the sections under each."""
    doc_title = ""
    sections: list[Section] = []
    current, paras = "", []
    for is_heading, text in blocks:
        if not text:
            continue
        if is_heading:
            if paras:
                sections.append((current, "\n\n".join(paras)))
            current, paras = text, []
            doc_title = doc_title or text
        else:
            paras.append(text)
    if paras:
        sections.append((current, "\n\n".join(paras)))
    return doc_title, sections


def docx_sections(path: Path) -> tuple[str, list[Section]]:
    import docx

    document = docx.Document(str(path))

    def blocks() -> Iterable[tuple[bool, str]]:
        for para in document.paragraphs:
            style = (para.style.name if para.style is not None else "") or ""
            yield style.startswith(("Heading", "Title")), para.text.strip()
        for table in document.tables:
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
            yield False, "\n".join(r for r in rows if r.strip(" |"))

    first_heading, sections = group_sections(blocks())
    return (document.core_properties.title or "").strip() or first_heading, sections


_HTML_BLOCKS = ("p", "li", "pre", "td", "th", "dd", "dt", "blockquote", "figcaption")
_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def html_sections(path: Path) -> tuple[str, list[Section]]:
    import lxml.html

    raw = path.read_bytes()
    # Without a declared charset lxml assumes Latin-1; files saved today are UTF-8 unless they say
    # otherwise (GBK pages declare it).
    declared = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_-]+)""", raw[:4096], re.I)
    encoding = declared.group(1).decode() if declared else "utf-8"
    root = lxml.html.fromstring(raw, parser=lxml.html.HTMLParser(encoding=encoding))
    for tag in root.xpath("//script|//style|//nav|//header|//footer|//noscript|//template"):
        tag.drop_tree()

    def blocks() -> Iterable[tuple[bool, str]]:
        for element in root.iter(*_HTML_HEADINGS, *_HTML_BLOCKS):
            heading = element.tag in _HTML_HEADINGS
            if not heading and any(a.tag in _HTML_BLOCKS for a in element.iterancestors()):
                continue  # already part of an enclosing block's text
            yield heading, " ".join(element.text_content().split())

    first_heading, sections = group_sections(blocks())
    return " ".join((root.findtext(".//title") or "").split()) or first_heading, sections


def pdf_sections(path: Path) -> tuple[str, list[Section]]:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title).strip()
    title = title or path.stem
    sections = []
    for number, page in enumerate(reader.pages, 1):
        text = (page.extract_text() or "").strip()
        if text:
            sections.append((f"{title} (page {number})", text))
    if not sections:
        raise KBError("no extractable text (scanned images need OCR first)")
    return title, sections


_DOC_READERS: dict[str, Callable[[Path], tuple[str, list[Section]]]] = {
    ".md": markdown_sections, ".markdown": markdown_sections, ".txt": markdown_sections,
    ".docx": docx_sections, ".html": html_sections, ".htm": html_sections, ".pdf": pdf_sections,
}


# ------------------------------------------------------------------------------------------ intents


def read_intents(path: Path) -> list[tuple[str, str]]:
    """`intents.json` ({intent: [examples]}) or `intents.jsonl` ({"intent", "text"} per line)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return [(intent, ex) for intent, examples in data.items() for ex in examples]
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append((row["intent"], row["text"]))
    return out


def collect_sources(src: Path, columns: FaqColumns | None = None) -> Sources:
    if not src.exists():
        raise KBError(f"knowledge source {src} does not exist")
    columns = columns or FaqColumns()
    files = [src] if src.is_file() else sorted(
        p for p in src.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    root = src if src.is_dir() else src.parent
    out = Sources([], [], files=len(files))
    for path in files:
        suffix = path.suffix.lower()
        try:
            if path.name.startswith("intents") and suffix in (".json", ".jsonl"):
                out.intents.extend(read_intents(path))
            elif suffix == ".jsonl":
                # JSONL has its own schema (question, answer, id, questions…); column names are for sheets.
                out.chunks.extend(read_jsonl_faq(path, FaqColumns(), out.skipped))
            elif suffix == ".csv":
                out.chunks.extend(read_csv_faq(path, columns, out.skipped))
            elif suffix in (".xlsx", ".xlsm"):
                out.chunks.extend(read_excel_faq(path, columns, out.skipped))
            elif suffix in _DOC_READERS:
                doc_title, sections = _DOC_READERS[suffix](path)
                found = sections_to_chunks(path, root, doc_title, sections)
                if not found:
                    out.skipped.append(Skipped(str(path), "no text found"))
                out.chunks.extend(found)
            else:
                out.skipped.append(Skipped(str(path), f"unsupported file type (readable: "
                                                      f"{', '.join(FAQ_SUFFIXES + DOC_SUFFIXES)})"))
        except Exception as exc:  # a broken file must not stop the build; it is reported by name
            reason = str(exc) or type(exc).__name__
            out.skipped.append(Skipped(str(path), f"cannot be read: {reason}"))
    counts: dict[str, int] = {}
    for chunk in out.chunks:
        counts[chunk.id] = counts.get(chunk.id, 0) + 1
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise KBError(f"duplicate entry ids in {src}: {', '.join(dupes[:10])}")
    return out
