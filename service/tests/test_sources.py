"""Source formats teams have: FAQ sheets (CSV, Excel), documents (PDF, Word, HTML); broken files are
reported by name and skipped. Fixture files are written by the tests with the libraries that read them
(the PDF by hand: the smallest valid file with a text stream)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docx
import openpyxl

from chatagent.knowledge import FaqColumns, HashEmbedder, KnowledgeBase, build_kb, collect_sources


def tiny_pdf(lines: list[str], title: str = "") -> bytes:
    content = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        "/Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        f"<< /Title ({title}) >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 6 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def write_sources(src: Path) -> None:
    src.mkdir()
    # Excel's CSV export: BOM, semicolons, Chinese text, a cell with several phrasings.
    (src / "faq-sheet.csv").write_text(
        "Frage;Antwort;Kennung;Varianten\n"
        "Do you sell gift wrapping?;Yes, choose 'Gift wrap' at checkout for ¥5.;gift-wrap;"
        "Can you wrap a present?|Gift packaging\n"
        "可以开发票吗？;可以，在订单页申请。;;\n"
        ";an answer without a question;broken-row;\n",
        encoding="utf-8-sig",
    )
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Loyalty"
    sheet.append(["Frage", "Antwort", "Kennung"])
    sheet.append(["How do loyalty points work?", "Every ¥1 spent earns one point.", "points-earn"])
    sheet.append([None, None, None])
    notes = book.create_sheet("Notes")
    notes.append(["just", "some", "notes"])
    book.save(src / "loyalty.xlsx")
    document = docx.Document()
    document.core_properties.title = "Warranty handbook"
    document.add_heading("Warranty", level=1)
    document.add_paragraph("Electronics carry a two-year warranty from the delivery date.")
    document.add_heading("Repairs", level=2)
    document.add_paragraph("Send the device with the warranty card; repairs take ten working days.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Phones", "24 months"
    document.save(src / "warranty.docx")
    (src / "stores.html").write_text(
        "<html><head><title>Our stores</title><style>p{color:red}</style></head><body>"
        "<nav><p>Home | Help</p></nav><h1>Opening hours</h1><p>Stores open <b>9:00–21:00</b> every day.</p>"
        "<ul><li><p>Shanghai flagship</p></li></ul><script>var x = 1;</script>"
        "<h2>门店自提</h2><p>下单时选择门店自提，两小时后可取货。</p></body></html>",
        encoding="utf-8",
    )
    (src / "care.pdf").write_bytes(tiny_pdf(["Wash wool by hand in cold water.", "Dry it flat."], "Care guide"))
    (src / "scan.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (src / "old.xlsx").write_bytes(b"PK\x03\x04 not a workbook")
    (src / "logo.png").write_bytes(b"\x89PNG\r\n")
    (src / "faq.jsonl").write_text(
        json.dumps({"id": "hours", "question": "When are you open?", "answer": "Every day 9:00–21:00.",
                    "questions": ["Opening times?"]}) + "\n{not json\n", encoding="utf-8")


COLUMNS = FaqColumns(question="Frage", answer="Antwort", id="Kennung", alternates="Varianten")


def test_every_format_is_read_and_broken_files_are_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_sources(src)
    sources = collect_sources(src, COLUMNS)
    by_id = {c.id: c for c in sources.chunks}

    gift = by_id["gift-wrap"]
    assert gift.answer.startswith("Yes, choose 'Gift wrap'") and gift.source == "faq-sheet.csv"
    assert gift.phrasings() == ["Do you sell gift wrapping?", "Can you wrap a present?", "Gift packaging"]
    invoice = by_id["faq-sheet-3"]  # no id in the sheet: file stem and row number
    assert invoice.lang == "zh" and invoice.question == "可以开发票吗？"
    points = by_id["points-earn"]
    assert points.answer == "Every ¥1 spent earns one point." and points.source == "loyalty.xlsx"
    assert by_id["hours"].phrasings() == ["When are you open?", "Opening times?"]

    warranty = {c.title: c for c in sources.chunks if c.source == "warranty.docx"}
    assert "two-year warranty" in warranty["Warranty"].text
    assert "ten working days" in warranty["Repairs"].text and "Phones | 24 months" in warranty["Repairs"].text
    html = {c.title: c.text for c in sources.chunks if c.source == "stores.html"}
    assert html["Opening hours"] == "Stores open 9:00–21:00 every day.\n\nShanghai flagship"
    assert html["门店自提"].startswith("下单时选择门店自提")
    assert not any("var x" in t or "Home | Help" in t or "color" in t for t in html.values())
    pdf = [c for c in sources.chunks if c.source == "care.pdf"]
    assert len(pdf) == 1 and pdf[0].title == "Care guide (page 1)" and "Wash wool by hand" in pdf[0].text
    assert pdf[0].id == "care#care-guide-page-1"

    skipped = {s.path.removeprefix(f"{src}/"): s.reason for s in sources.skipped}
    assert set(skipped) == {"scan.pdf", "old.xlsx", "logo.png", "faq-sheet.csv:4", "faq.jsonl:2",
                            "loyalty.xlsx[Notes]"}, skipped
    assert skipped["scan.pdf"].startswith("cannot be read")
    assert skipped["old.xlsx"].startswith("cannot be read")
    assert skipped["logo.png"].startswith("unsupported file type")
    assert "needs both 'Frage' and 'Antwort'" in skipped["faq-sheet.csv:4"]
    assert "no column named 'Frage' or 'Antwort'" in skipped["loyalty.xlsx[Notes]"]

    manifest = build_kb(src, tmp_path / "kb", HashEmbedder(512), columns=COLUMNS)
    assert manifest["count"] == len(sources.chunks) and len(manifest["skipped"]) == 6
    kb = KnowledgeBase.load(tmp_path / "kb", HashEmbedder(512))
    hits = kb.search(HashEmbedder(512).embed_queries(["wrap a present"])[0], 3, 0.0)
    assert hits[0].id == "gift-wrap"


def test_cli_build_reports_skipped_files_and_strict_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_sources(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAGENT_")}
    cli = [sys.executable, "-m", "chatagent", "kb", "build", str(src), "--out", str(tmp_path / "kb"),
           "--embedder", "hash", "--question-column", "Frage", "--answer-column", "Antwort",
           "--id-column", "Kennung", "--alternates-column", "Varianten"]
    built = subprocess.run(cli, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr
    assert f"kb build: skipped {src / 'scan.pdf'}: cannot be read" in built.stderr
    assert "kb build: embedding passages" in built.stderr
    assert json.loads(built.stdout)["count"] >= 9
    strict = subprocess.run([*cli, "--strict"], capture_output=True, text=True, env=env)
    assert strict.returncode == 2 and "6 source(s) skipped (--strict)" in strict.stderr
