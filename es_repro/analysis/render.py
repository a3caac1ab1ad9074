"""Plain Markdown and LaTeX tables (no tabulate/jinja2 needed), each with a caption and a regenerate line."""
from __future__ import annotations

import math

DASH = "–"


def fmt(value, spec: str = ".3f") -> str:
    """A number, or a dash for missing values (None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return format(value, spec)


def mean_std(mean, std, n=None, spec: str = ".3f") -> str:
    """'0.889 ± 0.004 (n=4)'; the std is left out when undefined (one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    text = format(mean, spec)
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {format(std, spec)}"
    return text + (f" (n={int(n)})" if n is not None else "")


def regenerate_line(command: str | None) -> str:
    return f"Regenerate: {command}" if command else "Regenerate: (command not recorded)"


def markdown_table(header: list[str], rows: list[list[str]], caption: str, command: str | None,
                   notes: list[str] = ()) -> str:
    lines = [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    lines.append(f"_{regenerate_line(f'`{command}`' if command else None)}_")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("–", "--")


def latex_table(header: list[str], rows: list[list[str]], caption: str, command: str | None, label: str,
                notes: list[str] = ()) -> str:
    lines = [f"% {regenerate_line(command)}", "% needs \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\small", r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    foot = " ".join(latex_escape(n) for n in notes)
    regen = r" \emph{" + latex_escape(regenerate_line(command)) + "}"
    lines += [r"\caption{" + latex_escape(caption) + (" " + foot if foot else "") + regen + "}",
              r"\label{" + label + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
