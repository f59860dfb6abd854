"""Invoices as documents: CSV and PDF. Reads only; nothing here changes an invoice.

PDFs are drawn with fpdf2, pure Python from the package index, so `make run` stays one command
(no system libraries such as Cairo or a headless office suite)."""

from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_UP, Decimal

from fpdf import FPDF

from .models import Invoice

CENTS = Decimal("0.01")


def amount_due(invoice: Invoice) -> Decimal:
    """The total rounded to the currency's minor unit, half up (once, on the total)."""
    return invoice.total.quantize(CENTS, rounding=ROUND_HALF_UP)


def title(invoice: Invoice) -> str:
    label = f"#{invoice.number}" if invoice.number else "DRAFT"
    return f"{invoice.get_kind_display()} {label}"


def invoice_csv(invoice: Invoice) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["invoice", "number", "customer", "period", "currency", "status"])
    writer.writerow(
        [
            invoice.kind,
            invoice.number or "",
            invoice.customer.name,
            f"{invoice.period:%Y-%m}",
            invoice.currency,
            invoice.status,
        ]
    )
    writer.writerow([])
    writer.writerow(["kind", "description", "quantity", "minutes", "amount"])
    for line in invoice.lines.all():
        writer.writerow([line.kind, line.description, line.quantity, line.minutes, line.amount])
    writer.writerow([])
    writer.writerow(["total", "", "", "", invoice.total])
    writer.writerow(["amount due", "", "", "", amount_due(invoice)])
    return out.getvalue()


def invoice_pdf(invoice: Invoice, *, issuer: str = "Trunkline") -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, f"{issuer}: {title(invoice)}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10)
    facts = [
        ("Customer", invoice.customer.name),
        ("Period", f"{invoice.period:%B %Y}"),
        ("Currency", invoice.currency),
        ("Issued", f"{invoice.issued_at:%Y-%m-%d}" if invoice.issued_at else "not issued"),
    ]
    if invoice.corrects_id:
        facts.append(("Corrects", f"invoice #{invoice.corrects.number}"))
    for label, value in facts:
        pdf.cell(30, 6, label)
        pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    widths = (95, 25, 25, 35)
    pdf.set_font("Helvetica", "B", 10)
    for width, head in zip(widths, ("Description", "Quantity", "Minutes", "Amount"), strict=True):
        pdf.cell(width, 7, head, border="B", align="L" if head == "Description" else "R")
    pdf.ln()
    pdf.set_font("Helvetica", "", 10)
    for line in invoice.lines.all():
        values = (line.description, f"{line.quantity}", f"{line.minutes}", f"{line.amount}")
        for width, value, align in zip(widths, values, "LRRR", strict=True):
            pdf.cell(width, 6, _latin1(value)[:60], align=align)
        pdf.ln()
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(sum(widths[:3]), 7, "Total", border="T")
    pdf.cell(widths[3], 7, f"{invoice.total}", border="T", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(sum(widths[:3]), 7, f"Amount due ({invoice.currency})")
    pdf.cell(widths[3], 7, f"{amount_due(invoice)}", align="R", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _latin1(text: str) -> str:
    """The core PDF fonts are Latin-1: anything else is shown as '?', never an error."""
    return text.encode("latin-1", "replace").decode("latin-1")
